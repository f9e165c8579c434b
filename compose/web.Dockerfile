# syntax=docker/dockerfile:1
# The browser's one origin as an image, for Kubernetes (deploy/k8s/base/web.yaml): nginx with the
# built page and compose's ingress rules (compose.conf + locations.conf: the upstreams are the
# api Services order-api:8081 ... stamping-api:8084). Build context: the repository root, after
# `make web`:
#
#   docker build -f compose/web.Dockerfile -t emeterai/web .
#
# (compose itself mounts the same files into nginx:1.22 instead; its context filter is
# compose/web.Dockerfile.dockerignore.)
FROM nginx:1.22
COPY compose/ingress/compose.conf /etc/nginx/conf.d/default.conf
COPY compose/ingress/locations.conf /etc/nginx/emeterai/locations.conf
COPY web/dist/ /srv/web/
EXPOSE 8080
