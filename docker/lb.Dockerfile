# HAProxy from Debian's packages in front of the api replicas (docker/compose.replicas.yml).
ARG LB_BASE=debian:bookworm-slim
FROM ${LB_BASE}
RUN apt-get update && apt-get install -y --no-install-recommends haproxy && rm -rf /var/lib/apt/lists/*
COPY docker/haproxy.cfg /etc/haproxy/haproxy.cfg
COPY docker/haproxy-503.http /etc/haproxy/503.http
USER haproxy
EXPOSE 8000
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
