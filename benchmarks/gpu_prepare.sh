#!/usr/bin/env bash
# Stage what `python -m benchmarks run gpu` (benchmarks/suites/gpu.py) needs on a GPU machine that reaches no package index, into .gpu_stage/
# (git-ignored; about 20 MiB):
#   diffusers-<version>-py3-none-any.whl   pip download --no-deps (imported from the zip: it is pure Python)
#   deps.zip                               the pure-Python modules diffusers imports that such an image may lack
#                                          (huggingface_hub, requests, httpx2, ...), zipped from this environment
#                                          with their .dist-info (diffusers checks some versions at import)
#   eqx_hsc_ScoreNet64.eqx                 galaxygrad 0.2.1's HSC-64 weights, copied from the installed wheel
#                                          (no license: staged for the run, never committed)
# run gpu --stage .gpu_stage appends the two archives to the END of sys.path, so the machine's own packages win.
#
#   bash benchmarks/gpu_prepare.sh            # from the repository root, with .venv ready
#   PYTHON=python3 STAGE=/tmp/stage bash benchmarks/gpu_prepare.sh
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
STAGE=${STAGE:-.gpu_stage}
mkdir -p "$STAGE"
version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('diffusers'))")
rm -f "$STAGE"/diffusers-*.whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$STAGE" "diffusers==$version"
"$PYTHON" - "$STAGE" <<'EOF'
import importlib.metadata as md
import importlib.util
import os
import shutil
import sys
import zipfile

stage = sys.argv[1]
# diffusers' import-time dependencies (UNet2DModel, DDIMScheduler) beyond what the GPU image ships
# (numpy, torch, safetensors, Pillow, tqdm, ...): listed by importing them here, see benchmarks/suites/gpu.py
modules = ["huggingface_hub", "filelock", "fsspec", "requests", "urllib3", "idna", "certifi", "charset_normalizer",
           "httpx2", "httpcore2", "h11", "anyio", "sniffio", "truststore", "yaml", "packaging", "typing_extensions",
           "colorama", "simplejson", "importlib_metadata", "zipp", "regex"]
dists = md.packages_distributions()
with zipfile.ZipFile(os.path.join(stage, "deps.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:  # a package: its folder, without compiled extensions or caches
            root = list(spec.submodule_search_locations)[0]
            base = os.path.dirname(root)
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for f in files:
                    if not f.endswith((".so", ".pyd", ".pyc")):
                        p = os.path.join(folder, f)
                        z.write(p, os.path.relpath(p, base))
        else:
            base = os.path.dirname(spec.origin)
            z.write(spec.origin, os.path.basename(spec.origin))
        for dist in dists.get(name, []):  # the .dist-info, for importlib.metadata.version checks
            files = md.distribution(dist).files or []
            for f in files:
                if ".dist-info/" in str(f):
                    p = f.locate()
                    if os.path.isfile(p):
                        z.write(p, str(f))
gg = importlib.util.find_spec("galaxygrad")  # find_spec does not import it
if gg is None:
    print("galaxygrad is not installed here (pip install galaxygrad==0.2.1): no .eqx staged")
else:
    shutil.copy(os.path.join(os.path.dirname(gg.origin), "eqx_hsc_ScoreNet64.eqx"), stage)
EOF
du -sh "$STAGE"/*
