#!/usr/bin/env bash
# Istio's task "Securing Gateways with HTTPS Using Secret Discovery Service", step by step,
# with a real Envoy and the `serve-dir` example. A directory stands in for Kubernetes
# Secrets: `kubectl create secret generic NAME --from-file=key=K --from-file=cert=C` becomes
# `mkdir DIR/NAME && cp K DIR/NAME/key && cp C DIR/NAME/cert` (the same key names).
#
#   scripts/istio-task.sh            # runs every step, prints what it does, exits non-zero on failure
#
# Where Istio's Pilot would push a new Gateway (listener) config, this script restarts Envoy
# with the new bootstrap; certificate changes never restart anything.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${SDS_PROFILE:-debug}"
work="$(mktemp -d "${TMPDIR:-/tmp}/sds-istio-task.XXXXXX")"
secrets="$work/secrets"
sock="$work/sds.sock"
mkdir -p "$secrets"
sds_pid="" envoy_pid=""

cleanup() {
    [[ -n "$envoy_pid" ]] && kill "$envoy_pid" 2>/dev/null || true
    [[ -n "$sds_pid" ]] && kill "$sds_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf -- "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; [[ -f "$work/envoy.log" ]] && tail -n 30 "$work/envoy.log" >&2; tail -n 30 "$work/sds.log" >&2; exit 1; }

step "Build the SDS server and install Envoy"
if [[ "$PROFILE" == release ]]; then
    cargo build --release --example serve-dir
else
    cargo build --example serve-dir
fi
envoy_bin="${ENVOY_BIN:-$(scripts/install-envoy.sh | tail -n 1)}"

step "Start the SDS server (serve-dir) on unix:$sock"
"${CARGO_TARGET_DIR:-target}/$PROFILE/examples/serve-dir" --dir "$secrets" --listen "unix:$sock" >"$work/sds.log" 2>&1 &
sds_pid=$!
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
[[ -S "$sock" ]] || fail "the SDS server did not start"

cd "$work"
step "Generate client and server certificates and keys (as in the Istio task)"
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' \
    -keyout example.com.key -out example.com.crt 2>/dev/null
openssl req -out httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout httpbin.example.com.key \
    -subj "/CN=httpbin.example.com/O=httpbin organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 \
    -in httpbin.example.com.csr -out httpbin.example.com.crt 2>/dev/null
ls *.crt *.key

# An Envoy listener on 127.0.0.1:8443 the way Istio's gateway configures it: each server's
# certificate comes over SDS by credentialName; MUTUAL adds `<credentialName>-cacert`.
# Arguments: lines "host credentialName mode".
write_gateway() {
    {
        cat <<YAML
node: { id: istio-ingressgateway, cluster: istio-ingressgateway }
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: gateway
    address: { socket_address: { address: 127.0.0.1, port_value: 8443 } }
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
    filter_chains:
YAML
        for server in "$@"; do
            read -r host cred mode <<<"$server"
            cat <<YAML
    - filter_chain_match: { server_names: ["$host"] }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $host
          route_config:
            virtual_hosts:
            - name: $host
              domains: ["*"]
              routes:
              - match: { prefix: "/status/418" }
                direct_response: { status: 418, body: { inline_string: "\n    -=[ teapot ]=-\n\n       _...._\n     .'  _ _ \`.\n    | .\"\` ^ \`\". _,\n    \\\\_;\`\"---\"\`|//\n      |       ;/\n      \\\\_     _/\n        \`\"\"\"\`\n" } }
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "hello from $host\n" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: $([[ "$mode" == MUTUAL ]] && echo true || echo false)
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: $cred
              sds_config: { resource_api_version: V3, api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds } }] } }
YAML
            if [[ "$mode" == MUTUAL ]]; then
                cat <<YAML
            combined_validation_context:
              default_validation_context: {}
              validation_context_sds_secret_config:
                name: $cred-cacert
                sds_config: { resource_api_version: V3, api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds } }] } }
YAML
            fi
        done
        cat <<YAML
  clusters:
  - name: sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sds
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: "$sock" } } } }] }]
YAML
    } >"$work/envoy.yaml"
}

start_envoy() {
    [[ -n "$envoy_pid" ]] && { kill "$envoy_pid" 2>/dev/null || true; wait "$envoy_pid" 2>/dev/null || true; }
    "$envoy_bin" -c "$work/envoy.yaml" --base-id $((RANDOM + 1000)) --disable-hot-restart \
        --log-level warn >"$work/envoy.log" 2>&1 &
    envoy_pid=$!
}

# curl_gw HOST CA [curl args...]: GET https://HOST:8443/status/418, retrying for up to 20 s.
curl_gw() {
    local host="$1" ca="$2"; shift 2
    for _ in $(seq 100); do
        if out=$(curl --silent --show-error --noproxy '*' --max-time 5 -HHost:"$host" \
            --resolve "$host:8443:127.0.0.1" --cacert "$ca" "$@" "https://$host:8443/status/418" 2>&1); then
            printf '%s\n' "$out"; return 0
        fi
        sleep 0.2
    done
    printf '%s\n' "$out"; return 1
}

# teapot HOST CA [curl args...]: the request succeeds and the body is httpbin's teapot.
teapot() {
    local out
    out="$(curl_gw "$@")" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out"
    [[ "$out" == *teapot* ]]
}

# curl_fails HOST CA [curl args...]: succeeds if the TLS handshake or verification fails
# (retrying while the request still works; a refused connection does not count).
curl_fails() {
    local host="$1" ca="$2" rc; shift 2
    for _ in $(seq 100); do
        out=$(curl --silent --show-error --noproxy '*' --max-time 5 -HHost:"$host" \
            --resolve "$host:8443:127.0.0.1" --cacert "$ca" "$@" "https://$host:8443/status/418" 2>&1) && rc=0 || rc=$?
        if [[ $rc -ne 0 && $rc -ne 7 ]]; then
            printf 'refused as expected (curl exit %s): %s\n' "$rc" "$out"; return 0
        fi
        sleep 0.2
    done
    return 1
}

step "Configure a TLS ingress gateway for a single host"
echo '$ kubectl create -n istio-system secret generic httpbin-credential --from-file=key=httpbin.example.com.key --from-file=cert=httpbin.example.com.crt'
mkdir "$secrets/httpbin-credential"
cp httpbin.example.com.key "$secrets/httpbin-credential/key"
cp httpbin.example.com.crt "$secrets/httpbin-credential/cert"
write_gateway "httpbin.example.com httpbin-credential SIMPLE"
start_envoy
teapot httpbin.example.com example.com.crt || fail "SIMPLE TLS to httpbin.example.com"
echo "ok: httpbin.example.com answers over TLS with the certificate from SDS"

step "Rotate: delete the secret and create a new one with a new CA (no restart)"
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' \
    -keyout new-example.com.key -out new-example.com.crt 2>/dev/null
openssl req -out new-httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout new-httpbin.example.com.key \
    -subj "/CN=httpbin.example.com/O=httpbin organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA new-example.com.crt -CAkey new-example.com.key -set_serial 0 \
    -in new-httpbin.example.com.csr -out new-httpbin.example.com.crt 2>/dev/null
echo '$ kubectl -n istio-system delete secret httpbin-credential'
rm -r "$secrets/httpbin-credential"
echo '$ kubectl create -n istio-system secret generic httpbin-credential --from-file=key=new-httpbin.example.com.key --from-file=cert=new-httpbin.example.com.crt'
mkdir "$secrets/httpbin-credential.tmp"
cp new-httpbin.example.com.key "$secrets/httpbin-credential.tmp/key"
cp new-httpbin.example.com.crt "$secrets/httpbin-credential.tmp/cert"
mv "$secrets/httpbin-credential.tmp" "$secrets/httpbin-credential"
teapot httpbin.example.com new-example.com.crt || fail "rotation: the new chain is not served"
curl_fails httpbin.example.com example.com.crt || fail "rotation: the old chain still verifies"
echo "ok: the new certificate is served and the old CA no longer verifies it; Envoy pid $envoy_pid was not restarted"

step "Configure a TLS ingress gateway for multiple hosts"
openssl req -out helloworld-v1.example.com.csr -newkey rsa:2048 -nodes -keyout helloworld-v1.example.com.key \
    -subj "/CN=helloworld-v1.example.com/O=helloworld organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 \
    -in helloworld-v1.example.com.csr -out helloworld-v1.example.com.crt 2>/dev/null
echo '$ kubectl create -n istio-system secret generic helloworld-credential --from-file=key=helloworld-v1.example.com.key --from-file=cert=helloworld-v1.example.com.crt'
mkdir "$secrets/helloworld-credential"
cp helloworld-v1.example.com.key "$secrets/helloworld-credential/key"
cp helloworld-v1.example.com.crt "$secrets/helloworld-credential/cert"
write_gateway "httpbin.example.com httpbin-credential SIMPLE" "helloworld-v1.example.com helloworld-credential SIMPLE"
echo "(the Gateway now has two servers: Envoy restarts with the new listener config)"
start_envoy
teapot helloworld-v1.example.com example.com.crt || fail "helloworld-v1.example.com"
teapot httpbin.example.com new-example.com.crt || fail "httpbin.example.com with two hosts"
echo "ok: each host is served with its own credential, selected by SNI"

step "Configure a mutual TLS ingress gateway"
echo '$ kubectl -n istio-system delete secret httpbin-credential'
echo '$ kubectl create -n istio-system secret generic httpbin-credential --from-file=key=httpbin.example.com.key --from-file=cert=httpbin.example.com.crt --from-file=cacert=example.com.crt'
mkdir "$secrets/httpbin-credential.tmp"
cp httpbin.example.com.key "$secrets/httpbin-credential.tmp/key"
cp httpbin.example.com.crt "$secrets/httpbin-credential.tmp/cert"
cp example.com.crt "$secrets/httpbin-credential.tmp/cacert"
rm -r "$secrets/httpbin-credential"
mv "$secrets/httpbin-credential.tmp" "$secrets/httpbin-credential"
write_gateway "httpbin.example.com httpbin-credential MUTUAL" "helloworld-v1.example.com helloworld-credential SIMPLE"
echo "(the Gateway's tls.mode is now MUTUAL: Envoy restarts with the new listener config)"
start_envoy
openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key \
    -subj "/CN=client.example.com/O=client organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 2 \
    -in client.example.com.csr -out client.example.com.crt 2>/dev/null
teapot httpbin.example.com example.com.crt --cert client.example.com.crt --key client.example.com.key \
    || fail "MUTUAL with the client certificate"
curl_fails httpbin.example.com example.com.crt || fail "MUTUAL: a client without a certificate was let in"
echo "ok: without a client certificate the handshake fails; with client.example.com's it works"

step "Done"
grep -E "secret (added|updated|removed)|rejected" "$work/sds.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 20 || true
echo "istio-task: 4 passed, 0 failed"
