#!/bin/bash
# kind-bridge-cni: a small stand-in for kindnetd (kind's default CNI, an image this project cannot pull or build
# offline). A DaemonSet (kind/manifests/default-cni.yaml, host network, privileged) runs it on every node: it
# lists the nodes' podCIDRs with its ServiceAccount, writes a bridge + host-local CNI config for its own node's
# podCIDR, and routes every other node's podCIDR via that node's InternalIP (all kind nodes share one docker
# network). Pod traffic leaving the cluster's pod network is masqueraded.
set -u
CONF=/etc/cni/net.d/10-kind-bridge.conflist
me="${NODE_NAME:-$(hostname)}"
# the iptables backend the node already uses (as the kube-proxy image does)
legacy=$( (iptables-legacy-save) 2>/dev/null | grep -c '^-' )
nft=$( (iptables-nft-save) 2>/dev/null | grep -c '^-' )
if [ "${legacy:-0}" -gt "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
update-alternatives --set iptables "/usr/sbin/iptables-$mode" >/dev/null 2>&1
echo "kind-bridge-cni: node $me, iptables $mode"
sysctl -qw net.ipv4.ip_forward=1 2>/dev/null || true
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
while true; do
  if true; then
    out=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null) || out=""
    while read -r name cidr ip _; do
      [ -n "$name" ] && [ -n "$cidr" ] || continue
      case "$cidr" in *:*) continue ;; esac
      if [ "$name" = "$me" ]; then
        want=$(printf '{\n  "cniVersion": "0.4.0",\n  "name": "kind-bridge",\n  "plugins": [\n    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,\n     "ipam": {"type": "host-local", "ranges": [[{"subnet": "%s"}]], "routes": [{"dst": "0.0.0.0/0"}]}},\n    {"type": "portmap", "capabilities": {"portMappings": true}}\n  ]\n}' "$cidr")
        if [ "$(cat "$CONF" 2>/dev/null)" != "$want" ]; then
          mkdir -p "$(dirname "$CONF")"; printf '%s\n' "$want" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
          echo "kind-bridge-cni: wrote $CONF for podCIDR $cidr"
        fi
        cluster="${POD_SUBNET:-$(echo "$cidr" | awk -F'[./]' '{print $1"."$2".0.0/16"}')}"
        iptables -t nat -C POSTROUTING -s "$cidr" ! -d "$cluster" -m comment --comment kind-bridge-cni -j MASQUERADE 2>/dev/null \
          || iptables -t nat -A POSTROUTING -s "$cidr" ! -d "$cluster" -m comment --comment kind-bridge-cni -j MASQUERADE
      elif [ -n "$ip" ]; then
        if [ "$(ip route show "$cidr" 2>/dev/null)" != "$cidr via $ip dev eth0 " ] ; then
          ip route replace "$cidr" via "$ip" && echo "kind-bridge-cni: route $cidr via $ip ($name)"
        fi
      fi
    done <<< "$out"
  fi
  sleep 3
done
