package consensus

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

// UpsertMember creates a member or replaces its record. Member.Voter is
// ignored: suffrage lives in the Raft configuration, which the voter manager
// owns, and Store.State reports it from there.
type UpsertMember struct {
	Member Member `json:"member"`
}

// SetMemberState changes a member's state; At is when the proposer observed it.
type SetMemberState struct {
	ID    string      `json:"id"`
	State MemberState `json:"state"`
	At    time.Time   `json:"at"`
}

// RemoveMember deletes a member record.
type RemoveMember struct {
	ID string `json:"id"`
}

// PutModel adds a new version of a model, manifest and deploy figures in one
// write. Model.Version must be empty: the FSM allocates the next number from
// ClusterState.ModelVersions and reports it in Result.ModelVersion.
type PutModel struct {
	Model Model `json:"model"`
}

// DeleteModel deletes one model version, or every version when Version is
// empty, together with their placements.
type DeleteModel struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// SetPlacement replaces a model version's placement if the committed epoch
// equals ExpectedEpoch (0 when there is none yet), a compare-and-set that keeps
// two planners from overwriting each other. The committed epoch becomes
// ExpectedEpoch+1; Placement.Epoch is ignored.
type SetPlacement struct {
	Placement     Placement `json:"placement"`
	ExpectedEpoch uint64    `json:"expected_epoch"`
}

// PutToken stores a hashed API token.
type PutToken struct {
	Token Token `json:"token"`
}

// RevokeToken marks a token revoked.
type RevokeToken struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
}

// SetConfig replaces the cluster config.
type SetConfig struct {
	Config ClusterConfig `json:"config"`
}

// CatalogMode says what CatalogPut requires of the key's current presence.
type CatalogMode string

// Catalogue write modes.
const (
	CatalogUpsert   CatalogMode = ""         // write whatever is there
	CatalogRegister CatalogMode = "register" // fail with ErrExists when present
	CatalogUpdate   CatalogMode = "update"   // fail with ErrNotFound when absent
)

// CatalogPut writes one key of the small key/value catalogue.
type CatalogPut struct {
	Key   string      `json:"key"`
	Value string      `json:"value"`
	Mode  CatalogMode `json:"mode"`
}

// ReportServing replaces what node Node reports it serves. The node must be a member.
type ReportServing struct {
	Node    string  `json:"node"`
	Serving Serving `json:"serving"`
}

// MaxServedStages bounds one node's report.
const MaxServedStages = 4096

// CommandType implements Payload.
func (UpsertMember) CommandType() CommandType { return CmdUpsertMember }

// CommandType implements Payload.
func (SetMemberState) CommandType() CommandType { return CmdSetMemberState }

// CommandType implements Payload.
func (RemoveMember) CommandType() CommandType { return CmdRemoveMember }

// CommandType implements Payload.
func (PutModel) CommandType() CommandType { return CmdPutModel }

// CommandType implements Payload.
func (DeleteModel) CommandType() CommandType { return CmdDeleteModel }

// CommandType implements Payload.
func (SetPlacement) CommandType() CommandType { return CmdSetPlacement }

// CommandType implements Payload.
func (PutToken) CommandType() CommandType { return CmdPutToken }

// CommandType implements Payload.
func (RevokeToken) CommandType() CommandType { return CmdRevokeToken }

// CommandType implements Payload.
func (SetConfig) CommandType() CommandType { return CmdSetConfig }

// CommandType implements Payload.
func (CatalogPut) CommandType() CommandType { return CmdCatalogPut }

// CommandType implements Payload.
func (ReportServing) CommandType() CommandType { return CmdReportServing }

func (p UpsertMember) apply(st *ClusterState) (outcome, error) {
	m := p.Member.Clone()
	if m.ID == "" {
		return outcome{}, fmt.Errorf("%w: member without id", ErrInvalidCommand)
	}
	if m.State == "" {
		m.State = MemberAlive
	}
	if !m.State.valid() {
		return outcome{}, fmt.Errorf("%w: member state %q", ErrInvalidCommand, m.State)
	}
	m.Voter = false
	st.Members[m.ID] = m
	return outcome{}, nil
}

func (p SetMemberState) apply(st *ClusterState) (outcome, error) {
	if !p.State.valid() {
		return outcome{}, fmt.Errorf("%w: member state %q", ErrInvalidCommand, p.State)
	}
	m, ok := st.Members[p.ID]
	if !ok {
		return outcome{}, fmt.Errorf("%w: member %s", ErrNotFound, p.ID)
	}
	if m.State != p.State {
		m.State = p.State
		m.StateSince = p.At
	}
	st.Members[p.ID] = m
	return outcome{}, nil
}

func (p RemoveMember) apply(st *ClusterState) (outcome, error) {
	if _, ok := st.Members[p.ID]; !ok {
		return outcome{}, fmt.Errorf("%w: member %s", ErrNotFound, p.ID)
	}
	delete(st.Members, p.ID)
	delete(st.Serving, p.ID)
	return outcome{}, nil
}

func (p PutModel) apply(st *ClusterState) (outcome, error) {
	if p.Model.Name == "" {
		return outcome{}, fmt.Errorf("%w: model needs a name", ErrInvalidCommand)
	}
	if p.Model.Version != "" {
		return outcome{}, fmt.Errorf("%w: model version %q given; the cluster allocates versions", ErrInvalidCommand, p.Model.Version)
	}
	if v := sameDeploy(st, p.Model); v != "" {
		return outcome{modelVersion: v}, nil
	}
	n := st.ModelVersions[p.Model.Name] + 1
	m := p.Model.Clone()
	m.Version = strconv.FormatUint(n, 10)
	st.ModelVersions[m.Name] = n
	dropLegacyDeploys(st, m.Name)
	st.Models[ModelKey(m.Name, m.Version)] = m
	return outcome{modelVersion: m.Version}, nil
}

// sameDeploy is the newest version of m's name deployed with m's Deploy.Request, or
// "" when there is none (or m has no Request).
func sameDeploy(st *ClusterState, m Model) string {
	if m.Deploy.Request == "" {
		return ""
	}
	var best uint64
	for _, old := range st.Models {
		if old.Name != m.Name || old.Deploy.Request != m.Deploy.Request {
			continue
		}
		if v, err := strconv.ParseUint(old.Version, 10, 64); err == nil && v > best {
			best = v
		}
	}
	if best == 0 {
		return ""
	}
	return strconv.FormatUint(best, 10)
}

func (p DeleteModel) apply(st *ClusterState) (outcome, error) {
	found := false
	for k, m := range st.Models {
		if m.Name == p.Name && (p.Version == "" || m.Version == p.Version) {
			delete(st.Models, k)
			delete(st.Placements, k)
			found = true
		}
	}
	if !found {
		return outcome{}, fmt.Errorf("%w: model %s version %q", ErrNotFound, p.Name, p.Version)
	}
	dropLegacyDeploys(st, p.Name)
	return outcome{}, nil
}

func (p SetPlacement) apply(st *ClusterState) (outcome, error) {
	pl := p.Placement.Clone()
	key := ModelKey(pl.Model, pl.Version)
	if _, ok := st.Models[key]; !ok {
		return outcome{}, fmt.Errorf("%w: model %s", ErrNotFound, key)
	}
	var current uint64
	if old, ok := st.Placements[key]; ok {
		current = old.Epoch
	}
	if current != p.ExpectedEpoch {
		return outcome{}, fmt.Errorf("%w: %s is at epoch %d, expected %d", ErrEpochMismatch, key, current, p.ExpectedEpoch)
	}
	pl.Epoch = current + 1
	st.Placements[key] = pl
	return outcome{epoch: pl.Epoch}, nil
}

func (p PutToken) apply(st *ClusterState) (outcome, error) {
	if p.Token.ID == "" || p.Token.Hash == "" {
		return outcome{}, fmt.Errorf("%w: token needs an id and a hash", ErrInvalidCommand)
	}
	if p.Token.Scope != ScopeAdmin && p.Token.Scope != ScopeInfer {
		return outcome{}, fmt.Errorf("%w: token scope %q", ErrInvalidCommand, p.Token.Scope)
	}
	st.Tokens[p.Token.ID] = p.Token
	return outcome{}, nil
}

func (p RevokeToken) apply(st *ClusterState) (outcome, error) {
	t, ok := st.Tokens[p.ID]
	if !ok {
		return outcome{}, fmt.Errorf("%w: token %s", ErrNotFound, p.ID)
	}
	if !t.Revoked {
		t.Revoked = true
		t.RevokedAt = p.At
	}
	st.Tokens[p.ID] = t
	return outcome{}, nil
}

func (p SetConfig) apply(st *ClusterState) (outcome, error) {
	if p.Config.ReplicationFactor < 0 || p.Config.DeadNodeTimeout < 0 {
		return outcome{}, fmt.Errorf("%w: negative config value", ErrInvalidCommand)
	}
	st.Config = p.Config
	return outcome{}, nil
}

func (p CatalogPut) apply(st *ClusterState) (outcome, error) {
	if p.Key == "" {
		return outcome{}, fmt.Errorf("%w: empty catalogue key", ErrInvalidCommand)
	}
	_, present := st.Catalog[p.Key]
	switch p.Mode {
	case CatalogUpsert:
	case CatalogRegister:
		if present {
			return outcome{}, fmt.Errorf("%w: catalogue key %q", ErrExists, p.Key)
		}
	case CatalogUpdate:
		if !present {
			return outcome{}, fmt.Errorf("%w: catalogue key %q", ErrNotFound, p.Key)
		}
	default:
		return outcome{}, fmt.Errorf("%w: catalogue mode %q", ErrInvalidCommand, p.Mode)
	}
	st.Catalog[p.Key] = p.Value
	return outcome{}, nil
}

func (p ReportServing) apply(st *ClusterState) (outcome, error) {
	if _, ok := st.Members[p.Node]; !ok {
		return outcome{}, fmt.Errorf("%w: member %s", ErrNotFound, p.Node)
	}
	if p.Serving.Boot == "" {
		return outcome{}, fmt.Errorf("%w: serving report without a boot id", ErrInvalidCommand)
	}
	if len(p.Serving.Stages) > MaxServedStages {
		return outcome{}, fmt.Errorf("%w: %d served stages, at most %d", ErrInvalidCommand, len(p.Serving.Stages), MaxServedStages)
	}
	for _, r := range p.Serving.Stages {
		if r.Model == "" || r.Version == "" || r.Stage < 0 {
			return outcome{}, fmt.Errorf("%w: served stage %+v", ErrInvalidCommand, r)
		}
	}
	s := p.Serving
	s.Stages = slices.Clone(s.Stages)
	st.Serving[p.Node] = s
	return outcome{}, nil
}
