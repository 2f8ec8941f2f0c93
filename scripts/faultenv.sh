#!/usr/bin/env bash
# Reports which fault-injection mechanisms the fault scenarios can use on this machine:
# root, network namespaces, veth pairs, a bridge, nftables drops and random loss
# (numgen), and whether the kernel has netem (the harness does not need it: latency goes
# through its user-space proxy). Everything it creates lives in namespaces named
# lmh<pid>-probe-*, removed on exit; the root namespace is never touched.
set -uo pipefail

ok()   { printf '  %-34s yes\n' "$1"; }
no()   { printf '  %-34s NO  (%s)\n' "$1" "$2"; }

echo "fault environment on $(uname -sr):"
if [ "$(id -u)" -ne 0 ]; then
  no "root" "namespace scenarios will be reported NOT RUN: needs root"
  exit 0
fi
ok "root"
for tool in ip nft; do
  command -v "$tool" >/dev/null || { no "$tool" "install iproute2 and nftables"; exit 1; }
done
ok "ip and nft installed"

p="lmh$$-probe"
cleanup() { for ns in a b br; do ip netns del "$p-$ns" 2>/dev/null; done; }
trap cleanup EXIT

ip netns add "$p-br" && ip netns add "$p-a" && ip netns add "$p-b" \
  && ok "ip netns add" || { no "ip netns add" "no namespaces"; exit 1; }
ip -n "$p-br" link add br0 type bridge && ip -n "$p-br" link set br0 up \
  && ok "bridge in a namespace" || no "bridge in a namespace" "ip link add type bridge failed"
ip link add eth0 netns "$p-a" type veth peer name pa netns "$p-br" \
  && ip link add eth0 netns "$p-b" type veth peer name pb netns "$p-br" \
  && ok "veth pair between namespaces" || no "veth pair between namespaces" "ip link add type veth failed"
ip -n "$p-br" link set pa master br0 up; ip -n "$p-br" link set pb master br0 up
ip -n "$p-a" addr add 10.99.0.1/24 dev eth0; ip -n "$p-a" link set eth0 up; ip -n "$p-a" link set lo up
ip -n "$p-b" addr add 10.99.0.2/24 dev eth0; ip -n "$p-b" link set eth0 up; ip -n "$p-b" link set lo up
if ip netns exec "$p-a" nft -f - <<NFT
table inet lmfault {
  chain input { type filter hook input priority 0; policy accept; }
}
add rule inet lmfault input ip saddr 10.99.0.2 drop
add rule inet lmfault input ip saddr 10.99.0.3 numgen random mod 100 < 20 drop
NFT
then ok "nftables drop and numgen loss"; else no "nftables drop and numgen loss" "nft -f failed"; fi
if ip netns exec "$p-a" tc qdisc add dev eth0 root netem delay 10ms 2>/dev/null; then
  ok "tc netem (kernel delay/loss)"
else
  no "tc netem (kernel delay/loss)" "latency goes through the harness's user-space proxy"
fi
if ip netns exec "$p-b" tc qdisc add dev eth0 root tbf rate 1mbit burst 32kbit latency 400ms 2>/dev/null; then
  ok "tc tbf (kernel rate limit)"
else
  no "tc tbf (kernel rate limit)" "bandwidth caps go through the proxy"
fi
echo "traffic through them is measured by: go test -run 'TestNetwork' ./test/harness/"
