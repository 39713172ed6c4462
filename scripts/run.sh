#!/usr/bin/env bash
# Install Lancang into .venv and run the whole platform on embedded defaults:
# SQLite, a filesystem object store and a filesystem Celery broker under ./var.
# No server to install. On a fresh data dir it creates a small demo referral tree and
# an admin account, and prints how to sign in.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
stamp=.venv/.lancang-run-install
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "run.sh: installing Lancang into .venv (first run takes a minute)..." >&2
  .venv/bin/python -m pip install --no-input -q -e . </dev/null
  echo "$want" >"$stamp"
fi

lancang=.venv/bin/lancang
if [[ -z "$($lancang user list 2>/dev/null)" ]]; then
  password="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(9))')"
  $lancang institution add PE-CITY --name 普洱市人民医院 --name-en "Pu'er People's Hospital" --level city >/dev/null
  $lancang institution add LC-COUNTY --name 澜沧县第一人民医院 --name-en "Lancang County No.1 Hospital" --level county --parent PE-CITY >/dev/null
  $lancang institution add LC-T01 --name 勐朗镇卫生院 --name-en "Menglang Township Health Centre" --level township --parent LC-COUNTY >/dev/null
  $lancang ae add LC_T01_CT --institution LC-T01 >/dev/null
  $lancang user add admin --role admin --institution PE-CITY --password "$password" --must-change-password >/dev/null
  cat >&2 <<MSG
run.sh: created a demo referral tree (PE-CITY > LC-COUNTY > LC-T01), the calling AE
        LC_T01_CT, and the user 'admin' with password: $password
        (you will be asked to choose your own at the first sign-in)
MSG
fi
echo "run.sh: web http://${LANCANG_BIND_HOST:-127.0.0.1}:${LANCANG_HTTP_PORT:-8000}  DICOM ${LANCANG_DICOM_AE_TITLE:-LANCANG}@${LANCANG_BIND_HOST:-127.0.0.1}:${LANCANG_DICOM_PORT:-11112}  (Ctrl-C stops)" >&2
exec $lancang serve
