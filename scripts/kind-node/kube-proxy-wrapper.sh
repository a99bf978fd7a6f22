#!/bin/sh
# kube-proxy image entry: pick the iptables backend the node already uses (legacy vs nft), like
# kubernetes-sigs/iptables-wrappers does for the upstream image, then run the real kube-proxy.
legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-' )
nft=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | grep -c '^-' )
if [ "${legacy:-0}" -gt "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
update-alternatives --set iptables "/usr/sbin/iptables-$mode" >/dev/null 2>&1
update-alternatives --set ip6tables "/usr/sbin/ip6tables-$mode" >/dev/null 2>&1
echo "kube-proxy wrapper: iptables mode $mode (legacy rules $legacy, nft rules $nft)" >&2
exec /usr/local/bin/kube-proxy-bin "$@"
