package partition

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseBytes reads a byte count such as "2GiB", "1.5GB", "512MiB", "300M" or "1024".
// Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units are both accepted;
// a bare K, M, G or T is binary, as memory budgets usually are.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsNaN(f) {
		return 0, fmt.Errorf("bad byte count %q", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("bad byte count %q: unknown unit %q", s, unit)
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("bad byte count %q: too large", s)
	}
	return int64(v), nil
}
