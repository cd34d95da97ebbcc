# vaeproxy in a container: built from this tree, run as a non-root user, the
# demo configuration by default (every request goes to the built-in demo
# origin). Mount your own config at /etc/vaeproxy/vaeproxy.toml.
#
#   docker build -t vaeproxy .
#   docker run --rm -p 8080:8080 vaeproxy
#
# The public listener binds 0.0.0.0:8080 inside the container
# (VAEPROXY_LISTEN); the admin listener (health, metrics, PURGE) stays on the
# container's loopback unless VAEPROXY_ADMIN_LISTEN says otherwise, so
# publishing port 8080 never exposes it.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin vaeproxy

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin vaeproxy
COPY --from=build /src/target/release/vaeproxy /usr/local/bin/vaeproxy
COPY config/vaeproxy.toml /etc/vaeproxy/vaeproxy.toml
ENV VAEPROXY_LISTEN=0.0.0.0:8080 RAYON_NUM_THREADS=2
USER vaeproxy
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["/usr/local/bin/vaeproxy", "serve"]
