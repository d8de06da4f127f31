package deploy

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/forge-ci/forge/internal/atomicfile"
	"github.com/forge-ci/forge/wire"
)

// makeCerts makes what is missing in dir: the CA (ca.pem, ca-key.pem),
// the coordinator's certificate for the name agents dial, and the agent
// certificate every node shares, as `forge certs` writes them. A missing
// certificate is issued anew, its key too; a new CA re-issues both.
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
		say("made a new CA in %s (ca-key.pem is only needed to issue certificates: keep it safe)", dir)
	}
	issue := func(role wire.Role, name string, hosts []string) error {
		if ca == nil {
			var err error
			if ca, err = loadCA(dir); err != nil {
				return err
			}
		}
		cert, key, err := ca.Issue(wire.IssueRequest{Role: role, Name: name, Hosts: hosts, ValidFor: wire.DefaultLeafValidity})
		if err != nil {
			return err
		}
		return writePair(dir, name, cert, key)
	}
	newCA := ca != nil
	if newCA || !exists(file("coordinator.pem")) {
		if err := issue(wire.RoleCoordinator, "coordinator", []string{coordinatorHost}); err != nil {
			return err
		}
		say("issued %s (agents dial it as %s:7443 on the stack's network)", file("coordinator.pem"), coordinatorHost)
	}
	if newCA || !exists(file("agent.pem")) {
		if err := issue(wire.RoleAgent, "agent", nil); err != nil {
			return err
		}
		say("issued %s (shared by the agents of every node)", file("agent.pem"))
	}
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
