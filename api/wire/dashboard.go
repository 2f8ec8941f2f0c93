package wire

// Link is one measured mesh link, as the node at From last probed it.
type Link struct {
	// From and To are node names (a peer id when the name is not known).
	From string `json:"from"`
	To   string `json:"to"`
	// RTTMillis is the best of the probe's pings; BandwidthBytes its bulk transfer rate.
	RTTMillis      float64 `json:"rtt_ms"`
	BandwidthBytes float64 `json:"bandwidth_bytes_per_second"`
}

// LinkList is the body of GET /v1/links: the links every live node has measured.
type LinkList struct {
	Links []Link `json:"links"`
	// Missing are the nodes that did not answer in time.
	Missing []string `json:"missing,omitempty"`
}

// StageHistogram is the stage-call latency histogram of one stage of one model,
// summed over the nodes that answered (each node records the calls it drove).
type StageHistogram struct {
	Model string `json:"model"`
	// Stage is the stage index, or "drive" for requests handed to a driver.
	Stage string `json:"stage"`
	// Count and Sum are the calls and their total seconds since the nodes started.
	Count uint64  `json:"count"`
	Sum   float64 `json:"sum_seconds"`
	// Buckets are cumulative counts of calls at most LE seconds (the +Inf bucket is
	// Count).
	Buckets []HistogramBucket `json:"buckets"`
}

// HistogramBucket is one cumulative histogram bucket.
type HistogramBucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

// StageStats is the body of GET /v1/stage-stats: rates and quantiles come from the
// difference of two readings.
type StageStats struct {
	Stages []StageHistogram `json:"stages"`
	// Nodes are the nodes whose figures are included; Missing those that did not
	// answer in time.
	Nodes   []string `json:"nodes"`
	Missing []string `json:"missing,omitempty"`
}
