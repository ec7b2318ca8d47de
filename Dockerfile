# remotedialer-server in a container: the package installed from this
# checkout on a slim Python, run as an unprivileged user.
#
#   docker build -t remotedialer .
#   docker run --rm -p 8123:8123 -v $PWD/secrets:/etc/remotedialer:ro remotedialer \
#       --listen tcp:8123 --clients-file /etc/remotedialer/clients
#
# The client is in the same image:
#   docker run --rm --entrypoint twistd remotedialer -n --pidfile= remotedialer-client --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /tmp/remotedialer
RUN pip install /tmp/remotedialer \
    && rm -rf /tmp/remotedialer \
    # twistd caches what plugins it found beside them; make the cache now,
    # as root, so the read-only, unprivileged container never tries to.
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin remotedialer

USER 10001:10001
WORKDIR /tmp
# 8123 tunnel (clients connect here), 8124 front door, 8125 admin (health, metrics)
EXPOSE 8123 8124 8125
# -n: stay in the foreground, log to standard output; --pidfile=: no pid file.
# SIGTERM drains (see README, "Graceful drain").
ENTRYPOINT ["twistd", "-n", "--pidfile=", "remotedialer-server"]
CMD ["--help"]
