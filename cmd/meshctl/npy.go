package main

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

	"github.com/layermesh/layermesh/accel/tensor"
)

// errNPY marks a .npy file this reader cannot take.
var errNPY = errors.New("unsupported .npy file")

// npyTypes maps NumPy's little-endian (or byte-sized) type strings to dtypes.
var npyTypes = map[string]tensor.DType{
	"<f4": tensor.Float32, "<f8": tensor.Float64, "<f2": tensor.Float16,
	"<i8": tensor.Int64, "<i4": tensor.Int32, "<i2": tensor.Int16, "|i1": tensor.Int8,
	"<u8": tensor.Uint64, "<u4": tensor.Uint32, "<u2": tensor.Uint16, "|u1": tensor.Uint8,
	"|b1": tensor.Bool,
}

var (
	npyDescr   = regexp.MustCompile(`'descr'\s*:\s*'([^']*)'`)
	npyFortran = regexp.MustCompile(`'fortran_order'\s*:\s*(True|False)`)
	npyShape   = regexp.MustCompile(`'shape'\s*:\s*\(([^)]*)\)`)
)

func readNPYFile(path string) (tensor.Tensor, error) {
	f, err := os.Open(path)
	if err != nil {
		return tensor.Tensor{}, err
	}
	defer f.Close()
	t, err := readNPY(bufio.NewReader(f))
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// readNPY reads a NumPy .npy file (format versions 1-3): a C-order array of a
// little-endian numeric or bool type.
func readNPY(r io.Reader) (tensor.Tensor, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: %w", errNPY, err)
	}
	if !bytes.Equal(pre[:6], []byte("\x93NUMPY")) {
		return tensor.Tensor{}, fmt.Errorf("%w: no NUMPY magic", errNPY)
	}
	var hlen int
	switch pre[6] {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return tensor.Tensor{}, fmt.Errorf("%w: %w", errNPY, err)
		}
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return tensor.Tensor{}, fmt.Errorf("%w: %w", errNPY, err)
		}
		hlen = int(binary.LittleEndian.Uint32(b[:]))
	default:
		return tensor.Tensor{}, fmt.Errorf("%w: format version %d", errNPY, pre[6])
	}
	if hlen > 1<<20 {
		return tensor.Tensor{}, fmt.Errorf("%w: header of %d bytes", errNPY, hlen)
	}
	header := make([]byte, hlen)
	if _, err := io.ReadFull(r, header); err != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: %w", errNPY, err)
	}
	h := string(header)
	m := npyDescr.FindStringSubmatch(h)
	if m == nil {
		return tensor.Tensor{}, fmt.Errorf("%w: no descr in %q", errNPY, h)
	}
	dt, ok := npyTypes[m[1]]
	if !ok {
		return tensor.Tensor{}, fmt.Errorf("%w: type %s (want a little-endian number or bool)", errNPY, m[1])
	}
	if m := npyFortran.FindStringSubmatch(h); m == nil || m[1] != "False" {
		return tensor.Tensor{}, fmt.Errorf("%w: only C-order arrays", errNPY)
	}
	m = npyShape.FindStringSubmatch(h)
	if m == nil {
		return tensor.Tensor{}, fmt.Errorf("%w: no shape in %q", errNPY, h)
	}
	shape := []int64{}
	for _, d := range strings.Split(m[1], ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		v, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			return tensor.Tensor{}, fmt.Errorf("%w: shape %q", errNPY, m[1])
		}
		shape = append(shape, v)
	}
	size, err := tensor.ByteSize(dt, shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: %w", errNPY, err)
	}
	// Read through a limit, so a lying shape cannot make us allocate more than the
	// file holds.
	data, err := io.ReadAll(io.LimitReader(r, size+1))
	if err != nil {
		return tensor.Tensor{}, err
	}
	if int64(len(data)) != size {
		return tensor.Tensor{}, fmt.Errorf("%w: shape %v of %s needs %d bytes, file has %d", errNPY, shape, dt, size, len(data))
	}
	return tensor.Tensor{DType: dt, Shape: shape, Data: data}, nil
}
