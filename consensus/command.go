package consensus

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// CommandVersion is the envelope version this build writes. It also reads
// version 1 (migrate.go). A node that meets a higher version in the log panics
// instead of skipping the entry, because skipping would make its state diverge
// from newer replicas.
//
// Version 2: models carry their deploy figures (Model.Deploy) and PutModel
// leaves the version to the FSM. Version 1 kept the figures as JSON strings in
// the catalogue and let the proposer pick the version.
const CommandVersion byte = 2

// CommandType selects the FSM handler. Values are part of the log format: never
// renumber, only append.
type CommandType byte

// Command types.
const (
	CmdUpsertMember   CommandType = 1
	CmdSetMemberState CommandType = 2
	CmdRemoveMember   CommandType = 3
	CmdPutModel       CommandType = 4
	CmdDeleteModel    CommandType = 5
	CmdSetPlacement   CommandType = 6
	CmdPutToken       CommandType = 7
	CmdRevokeToken    CommandType = 8
	CmdSetConfig      CommandType = 9
	CmdCatalogPut     CommandType = 10
	CmdReportServing  CommandType = 11
)

// maxRequestIDLen bounds the request id so a hostile or buggy proposer cannot
// bloat the dedup window that every replica keeps in memory and in snapshots.
const maxRequestIDLen = 128

// Payload is the body of one command; the concrete types below implement it.
type Payload interface {
	// CommandType names the FSM handler for this payload.
	CommandType() CommandType
	// apply changes st (a private copy) and says what it allocated.
	apply(st *ClusterState) (outcome, error)
}

// outcome is what a command allocated while applying: the placement epoch of a
// SetPlacement, the version of a PutModel.
type outcome struct {
	epoch        uint64
	modelVersion string
}

// Command is one write to the cluster state. Build it with NewCommand, which
// draws a fresh request id; keep the value and pass it again to retry, so the
// FSM can recognise the duplicate.
type Command struct {
	RequestID string
	Payload   Payload
}

// Result is what a committed command produced.
type Result struct {
	// Index is the Raft log index at which the command was (first) applied.
	Index uint64
	// Epoch is the new placement epoch after a SetPlacement, else 0.
	Epoch uint64
	// ModelVersion is the version a PutModel allocated, else "".
	ModelVersion string
	// Duplicate reports that the request id had been applied before and this
	// result is the remembered one.
	Duplicate bool
}

// NewCommand wraps p with a fresh random request id.
func NewCommand(p Payload) Command {
	return Command{RequestID: NewRequestID(), Payload: p}
}

// NewRequestID returns a random 128-bit id in hex.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// payloadDecoders is the dispatch table from type byte to payload type. The FSM
// panics on a type that is not here.
var payloadDecoders = map[CommandType]func([]byte) (Payload, error){
	CmdUpsertMember:   decodePayload[UpsertMember],
	CmdSetMemberState: decodePayload[SetMemberState],
	CmdRemoveMember:   decodePayload[RemoveMember],
	CmdPutModel:       decodePayload[PutModel],
	CmdDeleteModel:    decodePayload[DeleteModel],
	CmdSetPlacement:   decodePayload[SetPlacement],
	CmdPutToken:       decodePayload[PutToken],
	CmdRevokeToken:    decodePayload[RevokeToken],
	CmdSetConfig:      decodePayload[SetConfig],
	CmdCatalogPut:     decodePayload[CatalogPut],
	CmdReportServing:  decodePayload[ReportServing],
}

func decodePayload[T Payload](b []byte) (Payload, error) {
	var p T
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return p, nil
}

// EncodeCommand writes the envelope: version byte, type byte, uvarint length
// and bytes of the request id, then the JSON payload.
func EncodeCommand(c Command) ([]byte, error) {
	if c.Payload == nil {
		return nil, fmt.Errorf("%w: no payload", ErrInvalidCommand)
	}
	if c.RequestID == "" || len(c.RequestID) > maxRequestIDLen {
		return nil, fmt.Errorf("%w: request id must be 1..%d bytes", ErrInvalidCommand, maxRequestIDLen)
	}
	if _, old := c.Payload.(formatOnePayload); old {
		return nil, fmt.Errorf("%w: a format-1 %T is read from old logs, never written", ErrInvalidCommand, c.Payload)
	}
	t := c.Payload.CommandType()
	if _, ok := payloadDecoders[t]; !ok {
		return nil, fmt.Errorf("%w: unknown command type %d", ErrInvalidCommand, t)
	}
	body, err := json.Marshal(c.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: encode payload: %w", ErrInvalidCommand, err)
	}
	out := make([]byte, 0, 2+binary.MaxVarintLen64+len(c.RequestID)+len(body))
	out = append(out, CommandVersion, byte(t))
	out = binary.AppendUvarint(out, uint64(len(c.RequestID)))
	out = append(out, c.RequestID...)
	return append(out, body...), nil
}

// errUnknownCommand marks an envelope this build cannot interpret (newer
// version or type); the FSM panics on it.
type errUnknownCommand struct{ msg string }

func (e errUnknownCommand) Error() string { return e.msg }

// DecodeCommand parses an envelope written by EncodeCommand. It never panics;
// malformed input returns an error wrapping ErrInvalidCommand.
func DecodeCommand(b []byte) (Command, error) {
	c, _, err := decodeEnvelope(b)
	return c, err
}

// decodeEnvelope also reports whether the failure is an unknown version/type.
func decodeEnvelope(b []byte) (Command, bool, error) {
	if len(b) < 2 {
		return Command{}, false, fmt.Errorf("%w: envelope too short (%d bytes)", ErrInvalidCommand, len(b))
	}
	var decoders map[CommandType]func([]byte) (Payload, error)
	switch {
	case b[0] == CommandVersion:
		decoders = payloadDecoders
	case b[0] == 1:
		decoders = formatOneDecoders
	case b[0] > CommandVersion:
		return Command{}, true, fmt.Errorf("%w: %w", ErrInvalidCommand, errUnknownCommand{
			fmt.Sprintf("command format %d is newer than this build's %d", b[0], CommandVersion)})
	default:
		return Command{}, false, fmt.Errorf("%w: command format %d was never written", ErrInvalidCommand, b[0])
	}
	t := CommandType(b[1])
	dec, ok := decoders[t]
	if !ok {
		return Command{}, true, fmt.Errorf("%w: %w", ErrInvalidCommand, errUnknownCommand{fmt.Sprintf("unknown command type %d", t)})
	}
	n, w := binary.Uvarint(b[2:])
	if w <= 0 || n == 0 || n > maxRequestIDLen || uint64(len(b)-2-w) < n {
		return Command{}, false, fmt.Errorf("%w: bad request id length", ErrInvalidCommand)
	}
	off := 2 + w
	id := string(b[off : off+int(n)])
	p, err := dec(b[off+int(n):])
	if err != nil {
		return Command{}, false, fmt.Errorf("%w: type %d payload: %w", ErrInvalidCommand, t, err)
	}
	return Command{RequestID: id, Payload: p}, false, nil
}
