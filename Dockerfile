# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t tandem .
#   docker run -p 8080:8080 -v tandem-data:/var/lib/tandem \
#     -v $PWD/config/local.toml:/opt/tandem/config/local.toml:ro -e JIRA_API_TOKEN=... tandem

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/journal.rs \
    && cargo build --release --locked --bin tandem 2>/dev/null || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tandem

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tandem --shell /usr/sbin/nologin tandem \
    && mkdir -p /var/lib/tandem /opt/tandem/config \
    && chown tandem:tandem /var/lib/tandem
COPY --from=build /src/target/release/tandem /usr/local/bin/tandem
COPY config/default.toml config/example.toml /opt/tandem/config/
WORKDIR /opt/tandem
# Inside a container the daemon must listen on all interfaces for the port mapping to reach it.
ENV TANDEM__SERVER__LISTEN=0.0.0.0:8080 \
    TANDEM__STORAGE__URL=sqlite:///var/lib/tandem/tandem.db
VOLUME ["/var/lib/tandem"]
EXPOSE 8080
USER tandem
# SIGTERM (docker stop) drains in-flight requests and closes the journal cleanly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["serve", "--log-format", "json"]
