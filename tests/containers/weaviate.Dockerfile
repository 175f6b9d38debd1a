# Weaviate's image, for machines that reach no image registry: the server program `make
# setup` provisioned (built from Weaviate's own Go module at the pinned version), with the
# entrypoint, command and ports of cr.weaviate.io/semitechnologies/weaviate, on a local
# Debian base. wget is there for docker-compose.yml's health check, as busybox's wget is in
# the official Alpine-based image. Built by tests/containers/provision.py, which tags it as
# the compose file names Weaviate's image; never built where that image can be pulled.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY weaviate /bin/weaviate
LABEL ib-vectorizer.local-build="weaviate binary"
EXPOSE 8080 50051
ENTRYPOINT ["/bin/weaviate"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--scheme", "http"]
