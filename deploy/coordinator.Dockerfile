# The Forge coordinator: FROM scratch, no shell. Built by `make images`
# (deploy/images.sh), which puts these files into the build context:
#   forge, forgexec           static binaries from `make build` (CGO off)
#   ca-certificates.crt       the build host's CA bundle, for https://api.github.com
#   skel.tar                  /tmp (1777) and /data (0700, uid 65532): COPY
#                             cannot set a directory's mode or owner, ADD of a
#                             tar keeps both
FROM scratch
ADD skel.tar /
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY forge forgexec /usr/local/bin/
# Not root by default. The stack runs it as 65532 with the group of the
# node's /var/run/docker.sock (make up finds it), and nothing else.
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080 7443
ENV FORGE_DATA=/data
ENTRYPOINT ["/usr/local/bin/forge"]
CMD ["coordinator"]
