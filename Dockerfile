# The image the pipeline runs in on Kubeflow Pipelines (every task), and the Beam worker image of
# its data stages on Dataflow, Flink or Spark: TFX's official 1.16 image with this project
# installed from requirements.lock, so the dotted paths the components name
# (trainer.model.run_fn, trainer.preprocessing.preprocessing_fn, trainer.dice, ...) resolve here.
#
#   docker build --platform linux/amd64 -t REGISTRY/lvseg:TAG .
#   docker push REGISTRY/lvseg:TAG
#
# The versions below must match requirements.lock and .python-version
# (tests/test_kubeflow_dockerfile.py checks them).
ARG TFX_VERSION=1.16.0
ARG BEAM_VERSION=2.59.0
ARG PYTHON_VERSION=3.10
# 1: the CUDA libraries of the locked TensorFlow as pip wheels (requirements-cuda.lock, ~3 GB), so
# the Trainer uses GPUs whatever CUDA the base image has; 0: a smaller, CPU-only image.
ARG CUDA=1

# Beam's worker boot program, of the locked Beam version (the base image may carry another).
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk

FROM tensorflow/tfx:${TFX_VERSION}
ARG PYTHON_VERSION
ARG CUDA

# A virtual environment from the base image's Python 3.10 holding exactly the lock: the set of
# versions tested with this project, whatever else the base image has installed.
ENV VIRTUAL_ENV=/opt/lvseg/venv
RUN python${PYTHON_VERSION} -m venv "${VIRTUAL_ENV}"
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"

WORKDIR /opt/lvseg/src
COPY requirements.lock requirements-cuda.lock ./
RUN python -m pip install --no-cache-dir --upgrade pip==24.2 \
 && python -m pip install --no-cache-dir --no-deps -r requirements.lock \
 && if [ "${CUDA}" = 1 ]; then \
      python -m pip install --no-cache-dir --no-deps -r requirements-cuda.lock; fi

# The project itself (its source stays here too: the curated schema is read from
# /opt/lvseg/src/pipeline/schema/schema.pbtxt, see kubeflow/runner.py), then an import of the
# installed modules the tasks load (from /, not from the source folder), and the code version
# the compiled spec must name (`lvseg kubeflow compile` prints it; kubeflow/code_version.py).
COPY . .
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -m pip check \
 && cd / && python -c "import trainer.model, trainer.preprocessing, trainer.dice, components.atomic_pusher, components.served_model, kubeflow.container_entrypoint, kubeflow.input_fingerprint" \
 && python -c "from kubeflow import code_version; print('code version', code_version.code_version())"

# Keras 2 for TFX 1.16, for every process that imports TensorFlow before this project's code
# (the Kubeflow entry point below, Beam workers); see trainer/tf_env.py.
ENV TF_USE_LEGACY_KERAS=1
# Beam workers run in this environment instead of creating their own, which would lack the lock.
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1

COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
# Kubeflow tasks replace the entry point with the compiled spec's command,
#   python -m kubeflow.container_entrypoint   (which hands over to TFX's entry point)
# Dataflow workers, and the SDK worker pools beside Flink or Spark task managers (started with
# the argument --worker_pool), run Beam's boot program, as in TFX's own image.
ENTRYPOINT ["/opt/apache/beam/boot"]
