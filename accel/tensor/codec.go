package tensor

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
)

// Wire format of a tensor list (all integers little-endian):
//
//	magic   [4]byte "LMT1"
//	count   uint32
//	count times:
//	  nameLen uint16, name [nameLen]byte
//	  dtype   uint8, rank uint8, dims [rank]int64
//	  payload uint64 byte count, then the payload: the raw element bytes, or for
//	          String tensors each element as uint32 length + bytes.
//
// The payload length is redundant with dtype and shape on purpose: the decoder checks
// that they agree before it allocates anything, so a lying peer costs nothing.

var magic = [4]byte{'L', 'M', 'T', '1'}

// Limits bound what Decode accepts from a peer.
type Limits struct {
	MaxTensors int   // most tensors in one frame
	MaxBytes   int64 // most payload bytes in all tensors together
}

// DefaultLimits accept what a pipeline stage realistically exchanges.
var DefaultLimits = Limits{MaxTensors: 1024, MaxBytes: 4 << 30}

const maxNameLen = 4096

// EncodedLen is the exact number of bytes Encode writes for ts.
func EncodedLen(ts []Tensor) int64 {
	n := int64(8)
	for i := range ts {
		n += int64(2+len(ts[i].Name)+2+8*len(ts[i].Shape)+8) + ts[i].ByteLen()
	}
	return n
}

// Encode writes ts to w. Element data is handed to w as-is (net.Buffers, so a socket
// gets one writev), never copied into a staging buffer.
func Encode(w io.Writer, ts []Tensor) (int64, error) {
	bufs := make(net.Buffers, 0, 2*len(ts)+1)
	hdr := make([]byte, 0, 64*len(ts)+8)
	hdr = append(hdr, magic[:]...)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(ts)))
	for i := range ts {
		t := &ts[i]
		if err := t.Validate(); err != nil {
			return 0, err
		}
		if len(t.Name) > maxNameLen {
			return 0, fmt.Errorf("tensor name of %d bytes exceeds %d", len(t.Name), maxNameLen)
		}
		hdr = binary.LittleEndian.AppendUint16(hdr, uint16(len(t.Name)))
		hdr = append(hdr, t.Name...)
		hdr = append(hdr, byte(t.DType), byte(len(t.Shape)))
		for _, d := range t.Shape {
			hdr = binary.LittleEndian.AppendUint64(hdr, uint64(d))
		}
		hdr = binary.LittleEndian.AppendUint64(hdr, uint64(t.ByteLen()))
		if t.DType == String {
			for _, s := range t.Strings {
				hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(s)))
				hdr = append(hdr, s...)
			}
			continue
		}
		// Flush the header so far and point at the data without copying it.
		bufs = append(bufs, hdr, t.Data)
		hdr = make([]byte, 0, 64)
	}
	if len(hdr) > 0 {
		bufs = append(bufs, hdr)
	}
	return bufs.WriteTo(w)
}

// Decode reads one tensor list written by Encode, enforcing lim. Every declared length
// is checked against the limits and against dtype x shape before memory is allocated.
func Decode(r io.Reader, lim Limits) ([]Tensor, error) {
	var head [8]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	if [4]byte(head[:4]) != magic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrMalformed, head[:4])
	}
	count := binary.LittleEndian.Uint32(head[4:])
	if int64(count) > int64(lim.MaxTensors) {
		return nil, fmt.Errorf("%w: %d tensors exceeds limit %d", ErrTooLarge, count, lim.MaxTensors)
	}
	ts := make([]Tensor, 0, count)
	var total int64
	var scratch [8*MaxRank + 8]byte
	for i := uint32(0); i < count; i++ {
		if _, err := io.ReadFull(r, scratch[:2]); err != nil {
			return nil, fmt.Errorf("%w: tensor %d name length: %w", ErrMalformed, i, err)
		}
		nameLen := int(binary.LittleEndian.Uint16(scratch[:2]))
		if nameLen > maxNameLen {
			return nil, fmt.Errorf("%w: tensor %d name of %d bytes", ErrMalformed, i, nameLen)
		}
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(r, name); err != nil {
			return nil, fmt.Errorf("%w: tensor %d name: %w", ErrMalformed, i, err)
		}
		if _, err := io.ReadFull(r, scratch[:2]); err != nil {
			return nil, fmt.Errorf("%w: tensor %d dtype: %w", ErrMalformed, i, err)
		}
		dt, rank := DType(scratch[0]), int(scratch[1])
		if !dt.Valid() {
			return nil, fmt.Errorf("%w: tensor %d: %w: %d", ErrMalformed, i, ErrUnknownDType, scratch[0])
		}
		if rank > MaxRank {
			return nil, fmt.Errorf("%w: tensor %d rank %d exceeds %d", ErrMalformed, i, rank, MaxRank)
		}
		if _, err := io.ReadFull(r, scratch[:8*rank+8]); err != nil {
			return nil, fmt.Errorf("%w: tensor %d shape: %w", ErrMalformed, i, err)
		}
		shape := make([]int64, rank)
		for j := range shape {
			shape[j] = int64(binary.LittleEndian.Uint64(scratch[8*j:]))
		}
		payload := binary.LittleEndian.Uint64(scratch[8*rank:])
		n, err := NumElements(shape)
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %d: %w", ErrMalformed, i, err)
		}
		if payload > math.MaxInt64 || total+int64(payload) > lim.MaxBytes || total+int64(payload) < total {
			return nil, fmt.Errorf("%w: payload of %d bytes exceeds limit %d", ErrTooLarge, payload, lim.MaxBytes)
		}
		total += int64(payload)
		t := Tensor{Name: string(name), DType: dt, Shape: shape}
		if dt == String {
			if t.Strings, err = decodeStrings(r, n, int64(payload)); err != nil {
				return nil, fmt.Errorf("%w: tensor %d: %w", ErrMalformed, i, err)
			}
		} else {
			want, err := ByteSize(dt, shape)
			if err != nil {
				return nil, fmt.Errorf("%w: tensor %d: %w", ErrMalformed, i, err)
			}
			if want != int64(payload) {
				return nil, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, frame declares %d", ErrDataLength, t.Name, shape, dt, want, payload)
			}
			if t.Data, err = readPayload(r, int64(payload)); err != nil {
				return nil, fmt.Errorf("%w: tensor %q data: %w", ErrMalformed, t.Name, err)
			}
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// eagerPayload is the largest payload read into a buffer of its declared size at once
// (a GPT-2-small answer, 25.7 MB, fits). A larger one grows its buffer as its bytes
// arrive, so a peer that declares gigabytes and sends nothing costs the reader no
// more than this.
const eagerPayload = 32 << 20

// readPayload reads exactly n bytes.
func readPayload(r io.Reader, n int64) ([]byte, error) {
	if n <= eagerPayload {
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	buf := make([]byte, 0, eagerPayload)
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, int(min(int64(cap(buf)), n-int64(len(buf)))))
		}
		k, err := io.ReadFull(r, buf[len(buf):min(int64(cap(buf)), n)])
		buf = buf[:len(buf)+k]
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

func decodeStrings(r io.Reader, n, payload int64) ([]string, error) {
	if n > payload/4 {
		return nil, fmt.Errorf("%d strings cannot fit in %d bytes", n, payload)
	}
	buf, err := readPayload(r, payload)
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	off := int64(0)
	for k := range out {
		if off+4 > payload {
			return nil, fmt.Errorf("string %d: length runs past payload", k)
		}
		l := int64(binary.LittleEndian.Uint32(buf[off:]))
		off += 4
		if off+l > payload {
			return nil, fmt.Errorf("string %d: %d bytes run past payload", k, l)
		}
		out[k] = string(buf[off : off+l])
		off += l
	}
	if off != payload {
		return nil, fmt.Errorf("%d trailing bytes after strings", payload-off)
	}
	return out, nil
}
