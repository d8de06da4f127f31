# The Forge agent: FROM scratch, no shell, one static binary. Built by
# `make images` (deploy/images.sh). It talks only to the coordinator (its
# own CA, no public roots needed) and to its node's /var/run/docker.sock.
FROM scratch
ADD skel.tar /
COPY forge /usr/local/bin/forge
# Not root by default; the stack adds the group of the node's docker socket.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/forge"]
CMD ["agent"]
