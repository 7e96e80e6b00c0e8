#!/usr/bin/env bash
# make demo: runs nftproxy on examples/manifests inside network namespaces and sends real
# connections through a ClusterIP and a NodePort. Needs root, iproute2 and nftables.
#
#   demo-pod1 10.244.1.2 ─┐
#   demo-pod2 10.244.1.3 ─┤ br0 10.244.1.1  demo-node (runs nftproxy)  203.0.113.1 ── demo-client 203.0.113.2
#                                         (node IP 192.168.0.2 also on the client-facing link)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
P=demo-$$
NODE=$P-node CLIENT=$P-client
PROXY_PID=
SERVER_PIDS=()

cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in $NODE $CLIENT $P-pod1 $P-pod2; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
[ -n "${DEMO_KEEP:-}" ] && trap - EXIT

if [ "$(id -u)" != 0 ]; then echo "make demo needs root (network namespaces)" >&2; exit 1; fi

ip netns add "$NODE"
ip netns add "$CLIENT"
ip -n "$NODE" link set lo up
ip -n "$CLIENT" link set lo up
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
ip -n "$NODE" link add br0 type bridge
ip -n "$NODE" addr add 10.244.1.1/24 dev br0
ip -n "$NODE" link set br0 up

i=2
for pod in pod1 pod2; do
  ns=$P-$pod
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$NODE" link add "v$pod" type veth peer name eth0 netns "$ns"
  ip -n "$NODE" link set "v$pod" master br0 up
  # Hairpin mode, as kubelet and the CNI bridge plugin set it: a pod can reach itself through a Service.
  ip -n "$NODE" link set "v$pod" type bridge_slave hairpin on
  ip -n "$ns" addr add "10.244.1.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via 10.244.1.1
  ip netns exec "$ns" "$BIN/echo" serve "10.244.1.$i:8080" &
  SERVER_PIDS+=($!)
  i=$((i + 1))
done

ip -n "$NODE" link add to-client type veth peer name eth0 netns "$CLIENT"
ip -n "$NODE" addr add 203.0.113.1/24 dev to-client
ip -n "$NODE" addr add 192.168.0.2/32 dev to-client
ip -n "$NODE" link set to-client up
ip -n "$CLIENT" addr add 203.0.113.2/24 dev eth0
ip -n "$CLIENT" link set eth0 up
ip -n "$CLIENT" route add default via 203.0.113.1

echo "== starting nftproxy in $NODE on examples/manifests"
ip netns exec "$NODE" "$BIN/nftproxy" run --manifests examples/manifests \
  --hostname-override node1 --cluster-cidr 10.244.0.0/16 2> "/tmp/$P-nftproxy.log" &
PROXY_PID=$!
for _ in $(seq 50); do
  ip netns exec "$NODE" nft list table ip nftproxy >/dev/null 2>&1 && break
  sleep 0.1
done

echo
echo "== 8 connections from pod1 (10.244.1.2) to ClusterIP 10.96.0.10:80"
for _ in $(seq 8); do ip netns exec "$P-pod1" "$BIN/echo" dial 10.96.0.10:80; done
echo
echo "== 8 connections from the external client (203.0.113.2) to NodePort 192.168.0.2:30080"
for _ in $(seq 8); do ip netns exec "$CLIENT" "$BIN/echo" dial 192.168.0.2:30080; done
echo
echo "== nft list table ip nftproxy (in $NODE)"
ip netns exec "$NODE" nft list table ip nftproxy
echo
echo "== nftproxy log"
cat "/tmp/$P-nftproxy.log"
rm -f "/tmp/$P-nftproxy.log"
