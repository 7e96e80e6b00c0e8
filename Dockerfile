# nftproxy image: a static binary on distroless.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t ghcr.io/nftproxy/nftproxy:TAG .
#
# Multi-platform with buildx (--platform linux/amd64,linux/arm64): the builder runs on the build
# machine's platform and cross-compiles, which needs no emulation since the binary is pure Go.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that they stay cached while only the source changes.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o /out/nftproxy ./cmd/nftproxy

# static-debian12, not its :nonroot variant: nftproxy runs as root holding only CAP_NET_ADMIN
# (deploy/daemonset.yaml drops every other capability), since a non-root process would not get
# the capability it needs for netlink. No shell, no package manager, no iptables or nft binary:
# nftproxy talks to the kernel over netlink itself.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/nftproxy /nftproxy
USER 0:0
ENTRYPOINT ["/nftproxy"]
