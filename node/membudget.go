package node

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// fallbackMemBudget is the stage budget when none is given and the free memory cannot
// be read (a platform without /proc/meminfo).
const fallbackMemBudget = 1 << 30

// defaultMemBudget derives the memory a node offers for stages when --mem-budget is
// not given: half of what the kernel reports available, so the node's own process,
// ONNX Runtime's working memory and the rest of the device keep the other half.
func defaultMemBudget() int64 {
	if avail, ok := memAvailable("/proc/meminfo"); ok && avail > 0 {
		return avail / 2
	}
	return fallbackMemBudget
}

// memAvailable reads MemAvailable (in bytes) from a meminfo file.
func memAvailable(path string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "12345678 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, false
		}
		return kb << 10, true
	}
	return 0, false
}
