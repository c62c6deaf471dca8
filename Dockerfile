# One image for every role; the command picks the role (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /opt/letmesh
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY mesh mesh
COPY controller controller
COPY agents agents
COPY gateway gateway
COPY letmesh letmesh
RUN pip install --no-cache-dir .
# The mount points exist in the image, owned by the user the roles run as: a named volume mounted
# there for the first time takes this ownership, so the roles can write to it. Without them Docker
# creates the volume root-owned and `letmesh zoo build /data/repository` fails with EACCES.
RUN useradd --create-home letmesh \
 && mkdir -p /data /keys /home/letmesh/state \
 && chown letmesh:letmesh /data /keys /home/letmesh/state
USER letmesh
WORKDIR /home/letmesh
ENTRYPOINT ["letmesh"]
