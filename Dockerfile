# The inference server as a container: `wgpu-ensemble serve` on a model repository
# mounted at /mnt/models (KServe's storage initializer mounts models there), listening
# on 0.0.0.0:8080 (KServe's default port for a custom predictor).
#
#   docker build -t wgpu-ensemble .
#   docker run --rm -p 8080:8080 -v "$PWD/models:/mnt/models:ro" wgpu-ensemble
#
# The image holds the Vulkan loader and Mesa (lavapipe, llvmpipe) so that it runs on
# any machine; on a GPU node, the vendor's driver and its Vulkan ICD come from the
# node (for NVIDIA: the NVIDIA Container Toolkit with NVIDIA_DRIVER_CAPABILITIES
# including "graphics"), and the server picks the adapters it finds.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wgpu-ensemble

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libvulkan1 mesa-vulkan-drivers libegl1 libegl-mesa0 libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wgpu-ensemble /usr/local/bin/wgpu-ensemble
# Mesa's EGL wants a runtime folder.
ENV XDG_RUNTIME_DIR=/tmp
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["wgpu-ensemble", "serve", "--host", "0.0.0.0", "--port", "8080", "--model-repository", "/mnt/models"]
