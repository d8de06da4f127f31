package web

import (
	"cmp"
	"net/http"
	"slices"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/version"
)

// certWarning is how close to its expiry an agent's certificate is shown
// as a warning: a renewal is due at two thirds of its life, so one this
// close has missed it (a default certificate lives 24 h).
const certWarning = 4 * time.Hour

// agentsView is the agents page: the connected agents, then the nodes
// whose agents connected once and are gone.
type agentsView struct {
	Version   string // the coordinator's
	Connected []agentRow
	Gone      []goneAgent
}

type agentRow struct {
	agents.AgentInfo
	Running  []string // builds running on the node
	CertLeft string
	CertWarn bool
	Since    string
}

type goneAgent struct {
	store.AgentSeen
	Revoked bool
}

func (a *API) agentsPage(w http.ResponseWriter, r *http.Request, p *auth.Principal) {
	if err := a.auth.NeedAdmin(p); err != nil {
		a.refuse(w, r, err, false)
		return
	}
	ctx := r.Context()
	active, err := a.cfg.Store.Active(ctx)
	if err != nil {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	running := map[string][]string{}
	for _, b := range active {
		if b.State == coordinator.Running && b.NodeID != "" {
			running[b.NodeID] = append(running[b.NodeID], b.ID)
		}
	}
	now := time.Now()
	v := &agentsView{Version: version.Version}
	connected := map[string]bool{}
	live := slices.Clone(a.cfg.Agents.Agents())
	slices.SortFunc(live, func(x, y agents.AgentInfo) int {
		return cmp.Or(cmp.Compare(x.Hostname, y.Hostname), cmp.Compare(x.NodeID, y.NodeID))
	})
	for _, ag := range live {
		connected[ag.NodeID] = true
		left := ag.CertExpires.Sub(now)
		row := agentRow{AgentInfo: ag, Running: running[ag.NodeID], CertWarn: left < certWarning,
			Since: duration(now.Sub(ag.ConnectedSince))}
		if left > 0 {
			row.CertLeft = "in " + duration(left)
		} else {
			row.CertLeft = "expired " + duration(-left) + " ago"
		}
		v.Connected = append(v.Connected, row)
	}
	seen, err := a.cfg.Store.AgentsSeen(ctx)
	if err != nil {
		a.errorPage(w, r, http.StatusInternalServerError, err)
		return
	}
	for _, s := range seen {
		if connected[s.NodeID] {
			continue
		}
		rev, err := a.cfg.Store.AgentRevocation(ctx, s.NodeID)
		if err != nil {
			a.errorPage(w, r, http.StatusInternalServerError, err)
			return
		}
		v.Gone = append(v.Gone, goneAgent{AgentSeen: s, Revoked: rev.Revoked})
	}
	d := a.data(p, "Agents")
	d.Agents = v
	a.render(w, http.StatusOK, "agents", d)
}
