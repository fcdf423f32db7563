#!/usr/bin/env bash
# `make wasm-image`: packs keygate.wasm as an OCI image layout that Istio's WasmPlugin
# can pull once pushed (oras, skopeo or crane push an OCI layout as it is).
#
#   istio/wasm-image.sh WASM OUT TAG
#
# The image is the "compat" Wasm image variant Istio reads: one standard tar+gzip layer
# holding plugin.wasm, and the annotation module.wasm.image/variant=compat. The tar and
# gzip are made reproducible (fixed names, owners, times), so the same keygate.wasm
# always gives the same digests.
set -euo pipefail
wasm=${1:?usage: wasm-image.sh WASM OUT TAG}
out=${2:?usage: wasm-image.sh WASM OUT TAG}
tag=${3:?usage: wasm-image.sh WASM OUT TAG}
[ -f "$wasm" ] || { echo "wasm-image: $wasm is missing: run 'make build-wasm'" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Stores FILE as a blob and prints its descriptor fields: digest and size.
blob() {
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    cp "$1" "$out/blobs/sha256/$digest"
    printf 'sha256:%s %s\n' "$digest" "$size"
}

cp "$wasm" "$work/plugin.wasm"
tar --create --file "$work/layer.tar" --directory "$work" --sort=name --owner=0 --group=0 \
    --numeric-owner --mtime=@0 --mode=0444 --format=posix --pax-option=delete=atime,delete=ctime \
    plugin.wasm
diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip --no-name --best --stdout "$work/layer.tar" > "$work/layer.tar.gz"
read -r layer_digest layer_size < <(blob "$work/layer.tar.gz")

printf '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$diff_id" > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,%s,%s}' \
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$config_digest\",\"size\":$config_size}" \
    "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$layer_digest\",\"size\":$layer_size}]" \
    '"annotations":{"module.wasm.image/variant":"compat"}' > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$tag\"}}" \
    > "$out/index.json"
echo "wasm-image: $out ($tag, manifest $manifest_digest, layer $layer_size bytes)"
