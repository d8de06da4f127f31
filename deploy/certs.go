package deploy

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forge-ci/forge/internal/atomicfile"
	"github.com/forge-ci/forge/wire"
)

// makeCerts makes what is missing in dir, as `forge certs` writes it: the
// CA (ca.pem, ca-key.pem), the coordinator's certificate for the name
// agents dial, and the join token agents trade for certificates of their
// own node, which the coordinator signs with the CA key (no agent
// certificate is made here). A new CA re-issues the coordinator's
// certificate; so does one past two thirds of its life.
func makeCerts(dir string, say func(format string, args ...any)) error {
	file := func(name string) string { return filepath.Join(dir, name) }
	var ca *wire.CA
	if !exists(file("ca.pem")) {
		if exists(file("ca-key.pem")) {
			return fmt.Errorf("%s is there without ca.pem: put ca.pem back, or remove %s for a new CA", file("ca-key.pem"), dir)
		}
		var err error
		if ca, err = wire.NewCA("Forge CA", wire.DefaultCAValidity); err != nil {
			return err
		}
		key, err := ca.KeyPEM()
		if err != nil {
			return err
		}
		if err := writePair(dir, "ca", ca.CertPEM(), key); err != nil {
			return err
		}
		say("made a new CA in %s (the coordinator signs agents' certificates with ca-key.pem: keep it safe)", dir)
	}
	why := "it was missing"
	if ca == nil {
		var err error
		if why, err = coordinatorCertStale(dir, time.Now()); err != nil {
			return err
		}
	}
	if why != "" {
		if ca == nil {
			var err error
			if ca, err = loadCA(dir); err != nil {
				return err
			}
		}
		cert, key, err := ca.Issue(wire.IssueRequest{Role: wire.RoleCoordinator, Name: "coordinator", Hosts: []string{coordinatorHost},
			ValidFor: wire.DefaultLeafValidity})
		if err != nil {
			return err
		}
		if err := writePair(dir, "coordinator", cert, key); err != nil {
			return err
		}
		say("issued %s (%s; agents dial it as %s:7443 on the stack's network)", file("coordinator.pem"), why, coordinatorHost)
	}
	if err := makeJoinToken(file(JoinTokenFile), say); err != nil {
		return err
	}
	// The certificate every agent shared before agents joined with the
	// token names no node: the coordinator refuses it, so it goes.
	for _, name := range []string{"agent.pem", "agent-key.pem"} {
		if err := os.Remove(file(name)); err == nil {
			say("removed %s: agents now join with the join token and get a certificate for their own node", file(name))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the shared agent certificate: %w", err)
		}
	}
	return nil
}

// coordinatorCertStale says why dir's coordinator certificate must be
// issued again ("" when it is good): missing, unreadable, not from dir's
// CA, or past two thirds of its life (wire.RenewAt) at now.
func coordinatorCertStale(dir string, now time.Time) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "coordinator.pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return "it was missing", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the coordinator's certificate: %w", err)
	}
	cert, err := parseCert(raw)
	if err != nil {
		return "coordinator.pem was not a certificate", nil
	}
	if !exists(filepath.Join(dir, "coordinator-key.pem")) {
		return "its key was missing", nil
	}
	rawCA, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return "", fmt.Errorf("read the CA: %w", err)
	}
	ca, err := parseCert(rawCA)
	if err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dir, "ca.pem"), err)
	}
	if cert.CheckSignatureFrom(ca) != nil {
		return "the old one was not from this CA", nil
	}
	life := cert.NotAfter.Sub(cert.NotBefore)
	if renew := cert.NotBefore.Add(time.Duration(float64(life) * wire.RenewAt)); !now.Before(renew) {
		return "the old one expires " + cert.NotAfter.Format(time.DateOnly), nil
	}
	return "", nil
}

func parseCert(raw []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// makeJoinToken makes the join token when it is missing or blank, and
// checks a kept one: one line the coordinator and agents can read.
func makeJoinToken(path string, say func(format string, args ...any)) error {
	kept, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if k := strings.TrimSpace(string(kept)); k != "" {
		if len(k) > wire.MaxTokenSize || strings.ContainsAny(k, " \t\r\n") {
			return fmt.Errorf("%s: want one word of at most %d characters; remove it and make up makes a new one", path, wire.MaxTokenSize)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(path, []byte(NewJoinToken()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	say("made a join token: %s (agents trade it for certificates of their own node)", path)
	return nil
}

func loadCA(dir string) (*wire.CA, error) {
	cert, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("read the CA: %w", err)
	}
	key, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("read the CA key, needed to issue a certificate: %w", err)
	}
	return wire.LoadCA(cert, key)
}

// writePair writes dir/NAME.pem (0644) and dir/NAME-key.pem (0600), the
// key first, in a folder only its owner may enter.
func writePair(dir, name string, cert, key []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, name+"-key.pem"), key, 0o600); err != nil {
		return fmt.Errorf("write %s's key: %w", name, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, name+".pem"), cert, 0o644); err != nil {
		return fmt.Errorf("write %s's certificate: %w", name, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
