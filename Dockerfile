# Gatehouse container image. Not built on the development machine (no Docker engine there).
#   docker build -t gatehouse .
#   docker run -v $PWD/htpasswd:/etc/gatehouse/htpasswd:ro -p 3128:3128 gatehouse
# With a config file (its settings apply where no flag overrides them):
#   docker run -v $PWD/etc:/etc/gatehouse:ro -p 3128:3128 gatehouse --config /etc/gatehouse/gatehouse.yaml
# Over TLS (an https:// proxy URL), with the certificate and key mounted as well:
#   docker run -v $PWD/etc:/etc/gatehouse:ro -p 3129:3129 gatehouse --htpasswd /etc/gatehouse/htpasswd \
#     --tls-listen 0.0.0.0:3129 --tls-cert /etc/gatehouse/tls/fullchain.pem --tls-key /etc/gatehouse/tls/privkey.pem
# The swift-prometheus dependency needs Swift tools 6.2 or later.

FROM swift:6.3-bookworm AS build
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libssl-dev libcrypt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product gatehouse \
 && install -D -m 0755 "$(swift build -c release --show-bin-path)/gatehouse" /out/gatehouse

FROM swift:6.3-bookworm-slim
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin gatehouse \
 && mkdir -p /etc/gatehouse
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
# Mount the credentials file read-only at /etc/gatehouse/htpasswd.
USER gatehouse
EXPOSE 3128 3129
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["--listen","0.0.0.0:3128","--htpasswd","/etc/gatehouse/htpasswd","--access-log","-"]
