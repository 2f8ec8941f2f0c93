package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Frame formats of the stage and blob protocols (integers big-endian; tensors follow in
// the accel/tensor wire codec, which is little-endian and self-describing).
//
//	stage request:  "LMS1" str request id, str model, str version, u32 stage,
//	                u8 flags (bit 0: drive; other bits must be 0),
//	                i64 deadline (unix ns, 0 = none), u16 n, n x str output name,
//	                then the tensor list
//	response:       u8 status 0 then the body (tensor list, blob bytes, ...)
//	                or u8 status 2, u16 code, u16 len, message
//	blob request:   "LMB1" [32]byte sha256, u64 offset, u32 length
//	str:            u16 len, bytes
//
// Every declared length is checked against a fixed bound before anything is allocated.
const (
	stageMagic     = "LMS1"
	blobMagic      = "LMB1"
	statusError    = 2
	maxFieldLen    = 1024
	maxOutputs     = 1024
	maxMessageLen  = 4096
	maxBlobRequest = 16 << 20
	// maxStage bounds the stage index on the wire.
	maxStage = 1<<31 - 1
	// flagDrive marks a stage request that hands the whole request to the peer
	// (StageRequest.Drive).
	flagDrive = 1 << 0
	// flagSession marks a session step: the session id, step kind and position follow
	// the outputs (StageRequest.Session).
	flagSession = 1 << 1
	// maxPos bounds a session position on the wire.
	maxPos = 1<<31 - 1
)

func appendStr(buf []byte, s string) ([]byte, error) {
	if len(s) > maxFieldLen {
		return nil, fmt.Errorf("%w: field of %d bytes exceeds %d", ErrFrameTooLarge, len(s), maxFieldLen)
	}
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(s)))
	return append(buf, s...), nil
}

func readStr(r io.Reader) (string, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > maxFieldLen {
		return "", fmt.Errorf("%w: field of %d bytes exceeds %d", ErrFrameTooLarge, n, maxFieldLen)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// stageHeader is the part of a StageRequest before the tensors.
func encodeStageHeader(req *StageRequest) ([]byte, error) {
	buf := []byte(stageMagic)
	var err error
	for _, s := range []string{req.RequestID, req.Model, req.Version} {
		if buf, err = appendStr(buf, s); err != nil {
			return nil, err
		}
	}
	if req.Stage < 0 || int64(req.Stage) > maxStage {
		return nil, fmt.Errorf("%w: stage %d", ErrBadRequest, req.Stage)
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(req.Stage))
	var flags byte
	if req.Drive {
		flags |= flagDrive
	}
	if req.Session != "" {
		flags |= flagSession
	}
	buf = append(buf, flags)
	var dl int64
	if !req.Deadline.IsZero() {
		dl = req.Deadline.UnixNano()
	}
	buf = binary.BigEndian.AppendUint64(buf, uint64(dl))
	if len(req.Outputs) > maxOutputs {
		return nil, fmt.Errorf("%w: %d outputs", ErrFrameTooLarge, len(req.Outputs))
	}
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(req.Outputs)))
	for _, o := range req.Outputs {
		if buf, err = appendStr(buf, o); err != nil {
			return nil, err
		}
	}
	if req.Session == "" {
		if req.Step != StepNone || req.Pos != 0 || req.Len != 0 {
			return nil, fmt.Errorf("%w: a session step without a session id", ErrBadRequest)
		}
		return buf, nil
	}
	if req.Step < StepPrefill || req.Step > StepClose || req.Pos < 0 || int64(req.Pos) > maxPos || req.Len < 0 || int64(req.Len) > maxPos {
		return nil, fmt.Errorf("%w: session step %d at %d of %d", ErrBadRequest, req.Step, req.Pos, req.Len)
	}
	if buf, err = appendStr(buf, req.Session); err != nil {
		return nil, err
	}
	buf = append(buf, byte(req.Step))
	buf = binary.BigEndian.AppendUint32(buf, uint32(req.Pos))
	return binary.BigEndian.AppendUint32(buf, uint32(req.Len)), nil
}

// readSessionStep reads the session part of a stage header (flagSession).
func readSessionStep(r io.Reader, req *StageRequest) error {
	s, err := readStr(r)
	if err != nil {
		return fmt.Errorf("%w: session id: %w", ErrMalformedFrame, err)
	}
	var fixed [9]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return fmt.Errorf("%w: session step: %w", ErrMalformedFrame, err)
	}
	step, pos, n := StepKind(fixed[0]), binary.BigEndian.Uint32(fixed[1:5]), binary.BigEndian.Uint32(fixed[5:])
	if s == "" || step < StepPrefill || step > StepClose || pos > maxPos || n > maxPos {
		return fmt.Errorf("%w: session %q step %d at %d of %d", ErrMalformedFrame, s, step, pos, n)
	}
	req.Session, req.Step, req.Pos, req.Len = s, step, int(pos), int(n)
	return nil
}

func readStageHeader(r io.Reader) (*StageRequest, error) {
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, fmt.Errorf("%w: stage header: %w", ErrMalformedFrame, err)
	}
	if string(magic[:]) != stageMagic {
		return nil, fmt.Errorf("%w: stage magic %q", ErrMalformedFrame, magic[:])
	}
	req := &StageRequest{}
	for _, dst := range []*string{&req.RequestID, &req.Model, &req.Version} {
		s, err := readStr(r)
		if err != nil {
			return nil, fmt.Errorf("%w: stage header: %w", ErrMalformedFrame, err)
		}
		*dst = s
	}
	var fixed [15]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, fmt.Errorf("%w: stage header: %w", ErrMalformedFrame, err)
	}
	stage := binary.BigEndian.Uint32(fixed[:4])
	if stage > maxStage {
		return nil, fmt.Errorf("%w: stage %d", ErrMalformedFrame, stage)
	}
	req.Stage = int(stage)
	flags := fixed[4]
	if flags&^(flagDrive|flagSession) != 0 {
		return nil, fmt.Errorf("%w: unknown stage flags %#x", ErrMalformedFrame, flags)
	}
	req.Drive = flags&flagDrive != 0
	if dl := int64(binary.BigEndian.Uint64(fixed[5:13])); dl != 0 {
		req.Deadline = time.Unix(0, dl)
	}
	n := int(binary.BigEndian.Uint16(fixed[13:]))
	if n > maxOutputs {
		return nil, fmt.Errorf("%w: %d outputs", ErrFrameTooLarge, n)
	}
	for range n {
		s, err := readStr(r)
		if err != nil {
			return nil, fmt.Errorf("%w: stage outputs: %w", ErrMalformedFrame, err)
		}
		req.Outputs = append(req.Outputs, s)
	}
	if flags&flagSession != 0 {
		if err := readSessionStep(r, req); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func writeErrorFrame(w io.Writer, code ErrorCode, msg string) error {
	if len(msg) > maxMessageLen {
		msg = msg[:maxMessageLen]
	}
	buf := []byte{statusError}
	buf = binary.BigEndian.AppendUint16(buf, uint16(code))
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(msg)))
	_, err := w.Write(append(buf, msg...))
	return err
}

// readResponseStatus reads a response's status; an error status becomes *RemoteError.
func readResponseStatus(r io.Reader, p peer.ID) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("mesh: response from %s: %w", p, err)
	}
	switch b[0] {
	case statusOK:
		return nil
	case statusError:
	default:
		return fmt.Errorf("%w: response status %d", ErrMalformedFrame, b[0])
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("%w: error frame: %w", ErrMalformedFrame, err)
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n > maxMessageLen {
		return fmt.Errorf("%w: error message of %d bytes", ErrFrameTooLarge, n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("%w: error frame: %w", ErrMalformedFrame, err)
	}
	return &RemoteError{Peer: p, Code: ErrorCode(binary.BigEndian.Uint16(hdr[:2])), Message: string(msg)}
}

type blobRequest struct {
	hash   [32]byte
	offset uint64
	length uint32
}

func encodeBlobRequest(req blobRequest) []byte {
	buf := append([]byte(blobMagic), req.hash[:]...)
	buf = binary.BigEndian.AppendUint64(buf, req.offset)
	return binary.BigEndian.AppendUint32(buf, req.length)
}

func readBlobRequest(r io.Reader) (blobRequest, error) {
	var buf [4 + 32 + 8 + 4]byte
	var req blobRequest
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return req, fmt.Errorf("%w: blob request: %w", ErrMalformedFrame, err)
	}
	if string(buf[:4]) != blobMagic {
		return req, fmt.Errorf("%w: blob magic %q", ErrMalformedFrame, buf[:4])
	}
	copy(req.hash[:], buf[4:36])
	req.offset = binary.BigEndian.Uint64(buf[36:44])
	req.length = binary.BigEndian.Uint32(buf[44:])
	if req.length > maxBlobRequest {
		return req, fmt.Errorf("%w: blob request of %d bytes exceeds %d", ErrFrameTooLarge, req.length, maxBlobRequest)
	}
	if req.offset > 1<<62 {
		return req, fmt.Errorf("%w: blob offset %d", ErrMalformedFrame, req.offset)
	}
	return req, nil
}

var errWatcherData = errors.New("mesh: peer sent data while waiting for a response")
