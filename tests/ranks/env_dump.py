"""Write this rank's launcher environment as JSON to $DUMP_DIR/env<rank>.json."""

import json
import os

keys = [
    "RINGCOMM_RANK", "RINGCOMM_HOSTFILE", "RINGCOMM_BACKEND", "RINGCOMM_TOKEN",
    "RINGCOMM_TIMEOUT", "MLX_RANK", "MLX_HOSTFILE", "EXTRA", "PYTHONUNBUFFERED",
]
env = {k: os.environ.get(k) for k in keys}
with open(os.environ["RINGCOMM_HOSTFILE"]) as f:
    env["hostfile_content"] = json.load(f)
env["cwd"] = os.getcwd()
path = os.path.join(os.environ["DUMP_DIR"], f"env{env['RINGCOMM_RANK']}.json")
with open(path, "w") as f:
    json.dump(env, f)
print("rank", env["RINGCOMM_RANK"], "done")
