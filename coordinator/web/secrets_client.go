package web

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
)

func secretsPath(owner, repo string) string {
	return "/api/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(repo) + "/secrets"
}

// Secrets lists owner/repo's secrets: names and times, never values. It
// needs admin permission on the repository.
func (c *Client) Secrets(ctx context.Context, owner, repo string) ([]SecretView, error) {
	var out []SecretView
	return out, c.getJSON(ctx, secretsPath(owner, repo), nil, &out)
}

// SetSecret sets owner/repo's secret name to value.
func (c *Client) SetSecret(ctx context.Context, owner, repo, name string, value []byte) error {
	resp, err := c.send(ctx, http.MethodPut, secretsPath(owner, repo)+"/"+url.PathEscape(name), nil, bytes.NewReader(value))
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// DeleteSecret deletes owner/repo's secret name; one that is not there
// gives an *Error with status 404.
func (c *Client) DeleteSecret(ctx context.Context, owner, repo, name string) error {
	resp, err := c.send(ctx, http.MethodDelete, secretsPath(owner, repo)+"/"+url.PathEscape(name), nil, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
