#!/bin/sh
# Stands in for LangBot's `sys.executable` when LangBot 4.11.2's BoxRuntimeConnector launches its
# local Box runtime. LangBot runs `<python> -m langbot_plugin.cli.__init__ box -s
# --ws-control-port N`; this runs boxruntime with the same flags instead, with the main venv's
# python (boxruntime is not installed in LangBot's venv). Nothing else of LangBot's launch
# changes: its environment (token, trusted instance, box config), pipes and working directory.
set -eu
if [ "$#" -lt 3 ] || [ "$1" != "-m" ] || [ "$2" != "langbot_plugin.cli.__init__" ] || [ "$3" != "box" ]; then
  echo "langbot_box_python.sh: not LangBot's Box runtime launch: $*" >&2
  exit 2
fi
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/.venv/bin/python" -m boxruntime serve "$@"
