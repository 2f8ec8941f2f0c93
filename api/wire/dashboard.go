package wire

import "time"

// Link is one measured mesh link, as the node at From last probed it.
type Link struct {
	// From and To are node names (a peer id when the name is not known).
	From string `json:"from"`
	To   string `json:"to"`
	// RTTMillis is the best of the probe's pings; BandwidthBytes its bulk transfer rate.
	RTTMillis      float64   `json:"rtt_ms"`
	BandwidthBytes float64   `json:"bandwidth_bytes_per_second"`
	Updated        time.Time `json:"updated"`
}

// LinkList is the body of GET /v1/links: the links the answering node has measured.
type LinkList struct {
	Links []Link `json:"links"`
}
