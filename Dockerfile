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
RUN useradd --create-home letmesh
USER letmesh
WORKDIR /home/letmesh
ENTRYPOINT ["letmesh"]
