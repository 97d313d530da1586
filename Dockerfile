# syntax=docker/dockerfile:1
# A static diskimporter on an empty base: no shell, no package manager,
# running as KubeVirt's qemu uid/gid 107.
FROM golang:1.26 AS build
ARG VERSION=devel
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.buildVersion=${VERSION}" -o /out/diskimporter ./cmd/diskimporter \
 && /out/diskimporter version

FROM scratch
LABEL org.opencontainers.image.title="diskimporter" \
      org.opencontainers.image.description="Moves VM disk images from a URL into an OCI registry as one uncompressed layer, in one pass" \
      org.opencontainers.image.source="https://github.com/diskimporter/diskimporter"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/diskimporter /diskimporter
USER 107:107
ENTRYPOINT ["/diskimporter"]
