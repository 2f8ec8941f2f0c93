package tensor

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// ErrNPY marks a .npy file ReadNPY cannot take.
var ErrNPY = errors.New("unsupported .npy file")

// npyTypes maps NumPy's little-endian (or byte-sized) type strings to dtypes.
var npyTypes = map[string]DType{
	"<f4": Float32, "<f8": Float64, "<f2": Float16,
	"<i8": Int64, "<i4": Int32, "<i2": Int16, "|i1": Int8,
	"<u8": Uint64, "<u4": Uint32, "<u2": Uint16, "|u1": Uint8,
	"|b1": Bool,
}

var (
	npyDescr   = regexp.MustCompile(`'descr'\s*:\s*'([^']*)'`)
	npyFortran = regexp.MustCompile(`'fortran_order'\s*:\s*(True|False)`)
	npyShape   = regexp.MustCompile(`'shape'\s*:\s*\(([^)]*)\)`)
)

// ReadNPYFile reads the NumPy .npy file at path (see ReadNPY).
func ReadNPYFile(path string) (Tensor, error) {
	f, err := os.Open(path)
	if err != nil {
		return Tensor{}, err
	}
	defer f.Close()
	t, err := ReadNPY(bufio.NewReader(f))
	if err != nil {
		return Tensor{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// readNPY reads a NumPy .npy file (format versions 1-3): a C-order array of a
// little-endian numeric or bool type.
func ReadNPY(r io.Reader) (Tensor, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return Tensor{}, fmt.Errorf("%w: %w", ErrNPY, err)
	}
	if !bytes.Equal(pre[:6], []byte("\x93NUMPY")) {
		return Tensor{}, fmt.Errorf("%w: no NUMPY magic", ErrNPY)
	}
	var hlen int
	switch pre[6] {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return Tensor{}, fmt.Errorf("%w: %w", ErrNPY, err)
		}
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return Tensor{}, fmt.Errorf("%w: %w", ErrNPY, err)
		}
		hlen = int(binary.LittleEndian.Uint32(b[:]))
	default:
		return Tensor{}, fmt.Errorf("%w: format version %d", ErrNPY, pre[6])
	}
	if hlen > 1<<20 {
		return Tensor{}, fmt.Errorf("%w: header of %d bytes", ErrNPY, hlen)
	}
	header := make([]byte, hlen)
	if _, err := io.ReadFull(r, header); err != nil {
		return Tensor{}, fmt.Errorf("%w: %w", ErrNPY, err)
	}
	h := string(header)
	m := npyDescr.FindStringSubmatch(h)
	if m == nil {
		return Tensor{}, fmt.Errorf("%w: no descr in %q", ErrNPY, h)
	}
	dt, ok := npyTypes[m[1]]
	if !ok {
		return Tensor{}, fmt.Errorf("%w: type %s (want a little-endian number or bool)", ErrNPY, m[1])
	}
	if m := npyFortran.FindStringSubmatch(h); m == nil || m[1] != "False" {
		return Tensor{}, fmt.Errorf("%w: only C-order arrays", ErrNPY)
	}
	m = npyShape.FindStringSubmatch(h)
	if m == nil {
		return Tensor{}, fmt.Errorf("%w: no shape in %q", ErrNPY, h)
	}
	shape := []int64{}
	for _, d := range strings.Split(m[1], ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		v, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			return Tensor{}, fmt.Errorf("%w: shape %q", ErrNPY, m[1])
		}
		shape = append(shape, v)
	}
	size, err := ByteSize(dt, shape)
	if err != nil {
		return Tensor{}, fmt.Errorf("%w: %w", ErrNPY, err)
	}
	// Read through a limit, so a lying shape cannot make us allocate more than the
	// file holds.
	data, err := io.ReadAll(io.LimitReader(r, size+1))
	if err != nil {
		return Tensor{}, err
	}
	if int64(len(data)) != size {
		return Tensor{}, fmt.Errorf("%w: shape %v of %s needs %d bytes, file has %d", ErrNPY, shape, dt, size, len(data))
	}
	return Tensor{DType: dt, Shape: shape, Data: data}, nil
}

// WriteNPY writes t as a NumPy .npy file (format version 1, C order).
func WriteNPY(w io.Writer, t Tensor) error {
	descr := ""
	for k, v := range npyTypes {
		if v == t.DType {
			descr = k
		}
	}
	if descr == "" {
		return fmt.Errorf("%w: no .npy type for %s", ErrNPY, t.DType)
	}
	dims := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		dims[i] = strconv.FormatInt(d, 10)
	}
	shape := strings.Join(dims, ", ")
	if len(dims) == 1 {
		shape += ","
	}
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape)
	// The header is padded with spaces so the data starts 64-byte aligned.
	pad := 64 - (10+len(h)+1)%64
	h += strings.Repeat(" ", pad%64) + "\n"
	var pre [10]byte
	copy(pre[:], "\x93NUMPY\x01\x00")
	binary.LittleEndian.PutUint16(pre[8:], uint16(len(h)))
	for _, b := range [][]byte{pre[:], []byte(h), t.Data} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}
