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

func secretPath(owner, repo, name string) string {
	return secretsPath(owner, repo) + "/" + url.PathEscape(name)
}

// Secrets lists owner/repo's secrets: names and times, never values. It
// needs admin permission on the repository.
func (c *Client) Secrets(ctx context.Context, owner, repo string) ([]SecretView, error) {
	var out []SecretView
	return out, c.getJSON(ctx, secretsPath(owner, repo), nil, &out)
}

// SetSecret sets owner/repo's secret name to value.
func (c *Client) SetSecret(ctx context.Context, owner, repo, name string, value []byte) error {
	return c.call(ctx, http.MethodPut, secretPath(owner, repo, name), bytes.NewReader(value))
}

// DeleteSecret deletes owner/repo's secret name; one that is not there
// gives an *Error with status 404.
func (c *Client) DeleteSecret(ctx context.Context, owner, repo, name string) error {
	return c.call(ctx, http.MethodDelete, secretPath(owner, repo, name), nil)
}
