package consensus

// Format 1 (command envelope version 1, snapshot format 1) is what the builds
// before typed model records wrote. A node started on such a data dir, or
// replaying such entries from a peer's log, reads them into the typed state:
//
//   - A deploy annotation was a catalogue write of key "deploy/<name>@<version>"
//     whose value was JSON with one-letter keys. It becomes the model's
//     DeployInfo, and its version number goes into ModelVersions.
//   - A PutModel carried a version chosen by the proposer. It is applied as
//     given and raises ModelVersions to it.
//   - Annotations of deleted versions stayed in the catalogue forever so that
//     the proposer never picked their number again. Restore drops them: the
//     counter keeps their numbers.
//
// The one-letter keys below exist only to read that format; nothing writes it.

import (
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
)

// formatOneAnnotationPrefix keys a format-1 deploy annotation in the catalogue.
const formatOneAnnotationPrefix = "deploy/"

// formatOneDeployInfo is a format-1 deploy annotation's JSON value.
type formatOneDeployInfo struct {
	Replicas int     `json:"r"`
	Mem      []int64 `json:"m"`
	FLOPs    []int64 `json:"f"`
	Cutter   string  `json:"c"`
}

// formatOnePayload marks the payloads only the format-1 decoder produces;
// EncodeCommand refuses them.
type formatOnePayload interface {
	Payload
	formatOne()
}

// formatOneDecoders is payloadDecoders for envelope version 1: the commands
// whose meaning changed decode to their format-1 payloads.
var formatOneDecoders = func() map[CommandType]func([]byte) (Payload, error) {
	d := maps.Clone(payloadDecoders)
	d[CmdCatalogPut] = decodeFormatOneCatalogPut
	d[CmdPutModel] = decodeFormatOnePutModel
	return d
}()

// formatOneAnnotation is a format-1 catalogue write of a deploy annotation.
type formatOneAnnotation struct {
	Name    string     `json:"name"`
	Version uint64     `json:"version"`
	Deploy  DeployInfo `json:"deploy"`
}

// formatOnePutModel is a format-1 PutModel: the version comes with the model.
type formatOnePutModel struct {
	Model   Model  `json:"model"`
	Version uint64 `json:"version"`
}

func (formatOneAnnotation) formatOne() {}
func (formatOnePutModel) formatOne()   {}

// CommandType implements Payload.
func (formatOneAnnotation) CommandType() CommandType { return CmdCatalogPut }

// CommandType implements Payload.
func (formatOnePutModel) CommandType() CommandType { return CmdPutModel }

func decodeFormatOneCatalogPut(b []byte) (Payload, error) {
	var p CatalogPut
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(p.Key, formatOneAnnotationPrefix) {
		return p, nil
	}
	return parseFormatOneAnnotation(p.Key, p.Value)
}

// parseFormatOneAnnotation reads the catalogue entry key = raw of a format-1
// deploy annotation; key has formatOneAnnotationPrefix.
func parseFormatOneAnnotation(key, raw string) (formatOneAnnotation, error) {
	rest := strings.TrimPrefix(key, formatOneAnnotationPrefix)
	at := strings.LastIndexByte(rest, '@')
	if at <= 0 {
		return formatOneAnnotation{}, fmt.Errorf("format-1 deploy annotation key %q has no name@version", key)
	}
	v, err := parseVersion(rest[at+1:])
	if err != nil {
		return formatOneAnnotation{}, fmt.Errorf("format-1 deploy annotation %q: %w", key, err)
	}
	info, err := decodeFormatOneDeployInfo(raw)
	if err != nil {
		return formatOneAnnotation{}, fmt.Errorf("format-1 deploy annotation %q: %w", key, err)
	}
	return formatOneAnnotation{Name: rest[:at], Version: v, Deploy: info}, nil
}

func decodeFormatOneDeployInfo(raw string) (DeployInfo, error) {
	var old formatOneDeployInfo
	if err := json.Unmarshal([]byte(raw), &old); err != nil {
		return DeployInfo{}, err
	}
	return DeployInfo{Replicas: old.Replicas, StageMem: old.Mem, StageFLOPs: old.FLOPs, Cutter: old.Cutter}, nil
}

func decodeFormatOnePutModel(b []byte) (Payload, error) {
	var p PutModel
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	v, err := parseVersion(p.Model.Version)
	if err != nil {
		return nil, fmt.Errorf("format-1 model %q: %w", p.Model.Name, err)
	}
	return formatOnePutModel{Model: p.Model, Version: v}, nil
}

// parseVersion reads a version number as the builds of format 1 wrote it: a
// positive decimal without leading zeros, so that it prints back the same.
func parseVersion(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 || strconv.FormatUint(v, 10) != s {
		return 0, fmt.Errorf("version %q is not a positive decimal number", s)
	}
	return v, nil
}

// The annotation came before its manifest, so it normally waits in
// LegacyDeploys for the PutModel that follows.
func (p formatOneAnnotation) apply(st *ClusterState) (outcome, error) {
	if p.Name == "" {
		return outcome{}, fmt.Errorf("%w: format-1 deploy annotation without a model name", ErrInvalidCommand)
	}
	reserveVersion(st, p.Name, p.Version)
	key := ModelKey(p.Name, strconv.FormatUint(p.Version, 10))
	if m, ok := st.Models[key]; ok {
		m.Deploy = p.Deploy.Clone()
		st.Models[key] = m
		return outcome{}, nil
	}
	if st.LegacyDeploys == nil {
		st.LegacyDeploys = map[string]DeployInfo{}
	}
	st.LegacyDeploys[key] = p.Deploy.Clone()
	return outcome{}, nil
}

// A format-1 PutModel created or replaced the version it named.
func (p formatOnePutModel) apply(st *ClusterState) (outcome, error) {
	if p.Model.Name == "" {
		return outcome{}, fmt.Errorf("%w: model needs a name", ErrInvalidCommand)
	}
	m := p.Model.Clone()
	m.Version = strconv.FormatUint(p.Version, 10)
	key := ModelKey(m.Name, m.Version)
	if d, ok := st.LegacyDeploys[key]; ok {
		m.Deploy = d
	}
	reserveVersion(st, m.Name, p.Version)
	dropLegacyDeploys(st, m.Name)
	st.Models[key] = m
	return outcome{modelVersion: m.Version}, nil
}

func reserveVersion(st *ClusterState, name string, v uint64) {
	st.ModelVersions[name] = max(st.ModelVersions[name], v)
}

// dropLegacyDeploys forgets name's waiting format-1 annotations once a
// manifest or a delete of that name has been applied: an annotation still
// waiting then belongs to a deploy that never committed its manifest.
func dropLegacyDeploys(st *ClusterState, name string) {
	prefix := ModelKey(name, "")
	for key := range st.LegacyDeploys {
		if strings.HasPrefix(key, prefix) && !strings.Contains(key[len(prefix):], "@") {
			delete(st.LegacyDeploys, key)
		}
	}
	if len(st.LegacyDeploys) == 0 {
		st.LegacyDeploys = nil
	}
}

// migrateFormatOne turns a state restored from a format-1 snapshot into the
// typed form, in place: annotations move into their models or, for deleted
// versions, into ModelVersions only.
func migrateFormatOne(st *ClusterState) error {
	for _, m := range st.Models {
		v, err := parseVersion(m.Version)
		if err != nil {
			return fmt.Errorf("model %q: %w", m.Name, err)
		}
		reserveVersion(st, m.Name, v)
	}
	for key, raw := range st.Catalog {
		if !strings.HasPrefix(key, formatOneAnnotationPrefix) {
			continue
		}
		a, err := parseFormatOneAnnotation(key, raw)
		if err != nil {
			return err
		}
		reserveVersion(st, a.Name, a.Version)
		mk := ModelKey(a.Name, strconv.FormatUint(a.Version, 10))
		if m, ok := st.Models[mk]; ok {
			m.Deploy = a.Deploy
			st.Models[mk] = m
		}
		delete(st.Catalog, key)
	}
	return nil
}
