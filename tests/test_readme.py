"""The README cannot drift: every shell command in it names a script that exists, with flags its parser accepts
and repository files that exist; no user-facing command points at the development-only data."""
import argparse
import os
import re
import shlex
import sys

import pytest

from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTERNAL_MODULES = {'visdom.server', 'pytest', 'pip', 'venv'}   # `python -m X` of other projects


class Parsed(Exception):
    pass


def readme_sections(path=os.path.join(ROOT, 'README.md')):
    """[(section heading, [command line, ...])] of the README's ```bash blocks, continuation lines joined,
    comments dropped, `a && b` split."""
    sections, heading, block = [], 'preamble', None
    for line in open(path, encoding='utf-8'):
        if block is None and line.startswith('## '):
            heading = line[3:].strip()
        elif block is None and line.strip() == '```bash':
            block = []
        elif block is not None and line.strip() == '```':
            text = re.sub(r'\\\n\s*', ' ', ''.join(block))
            cmds = [c.strip() for ln in text.splitlines() for c in ln.split('#')[0].split('&&') if c.strip()]
            sections.append((heading, cmds))
            block = None
        elif block is not None:
            block.append(line)
    return sections


def python_call(cmd):
    """(script path or -m module, argv) of a `python ...`/`torchrun ... x.py` command, or None."""
    words = shlex.split(cmd)
    if not words:
        return None
    while words and re.fullmatch(r'\w+=\S*', words[0]):   # VAR=value prefixes
        words = words[1:]
    exe = os.path.basename(words[0])
    if exe == 'torchrun':
        script = next(i for i, w in enumerate(words) if w.endswith('.py'))
        return words[script], words[script + 1:]
    if not exe.startswith('python'):
        return None
    words = words[1:]
    while words and words[0] in ('-W', '-u', '-X', '-O'):
        words = words[2:] if words[0] in ('-W', '-X') else words[1:]
    if words[0] == '-m':
        return '-m ' + words[1], words[2:]
    return words[0], words[1:]


def all_calls():
    return [(heading, cmd, call) for heading, cmds in readme_sections() for cmd in cmds
            if (call := python_call(cmd)) is not None]


def test_the_readme_has_commands_to_check():
    scripts = {call[0] for _, _, call in all_calls()}
    assert {'train.py', 'test.py', 'demo.py', 'eval/evaluate_davis.py', 'eval/convert_davis.py'} <= scripts


def test_no_user_command_uses_the_development_data():
    for heading, cmds in readme_sections():
        if heading.lower().startswith('development'):
            continue
        for cmd in cmds:
            assert '../shared' not in cmd and '/work/' not in cmd, (heading, cmd)


def parse_flags(script, argv, monkeypatch):
    """Run ``script``'s argument parsing on ``argv`` (nothing else): raises SystemExit on a flag it refuses."""
    if script == 'train.py':
        from crw.cli import parse_train_args
        return parse_train_args(argv)
    if script == 'test.py':
        from crw.cli import parse_test_args
        return parse_test_args(argv)
    module = load_script(script)
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside = []

    def parse_then_stop(self, args=None, namespace=None):
        inside.append(1)
        try:
            namespace = parse_args(self, args, namespace)
        finally:
            inside.pop()
        raise Parsed(namespace)

    def parse_known_then_stop(self, args=None, namespace=None):
        result = parse_known_args(self, args, namespace)
        if inside:
            return result
        raise Parsed(result[0])

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_known_args', parse_known_then_stop)
    monkeypatch.setattr(sys, 'argv', [script] + list(argv))
    try:
        module.main(argv) if 'argv' in module.main.__code__.co_varnames else module.main()
    except Parsed as done:
        return done.args[0]
    raise AssertionError(f'{script}: main() returned without parsing its flags')


FILE_SUFFIXES = ('.txt', '.pth', '.mp4', '.png', '.jpg', '.json', '.csv')


def stand_ins(argv, tmp):
    """argv with each path that is not in the repository (a placeholder such as /path/to/davis, or an earlier
    command's output) replaced by an empty file or folder under ``tmp``."""
    out = []
    for word in argv:
        pathlike = not word.startswith('-') and not re.fullmatch(r'[\d.e+-]+', word) and (
            '/' in word or word.endswith(FILE_SUFFIXES))
        if pathlike and not os.path.exists(os.path.join(ROOT, word)):
            new = os.path.join(tmp, word.strip('/').replace('/', '_') or 'root')
            if word.endswith(FILE_SUFFIXES):
                open(new, 'a').close()
            else:
                os.makedirs(new, exist_ok=True)
            word = new
        out.append(word)
    return out


@pytest.mark.parametrize('heading,cmd,call', all_calls(), ids=lambda v: v if isinstance(v, str) else None)
def test_readme_command_parses(heading, cmd, call, monkeypatch, capsys, tmp_path):
    script, argv = call
    monkeypatch.chdir(ROOT)
    if script.startswith('-m '):
        assert script[3:] in EXTERNAL_MODULES or os.path.exists(
            os.path.join(ROOT, *script[3:].split('.')) + '.py'), cmd
        return
    assert os.path.isfile(os.path.join(ROOT, script)), f'{heading}: {script} does not exist'
    for word in argv:   # repository files the command reads
        head = word.split('/')[0]
        if not word.startswith('-') and head in os.listdir(ROOT) and head != word.rstrip('/') or word.endswith(
                '.pth') and '/' not in word:
            assert os.path.exists(os.path.join(ROOT, word)), f'{heading}: {cmd}: {word} does not exist'
    try:
        parse_flags(script, stand_ins(argv, str(tmp_path)), monkeypatch)
    except SystemExit as e:
        pytest.fail(f'{heading}: `{cmd}` is refused by {script} (exit {e.code}): {capsys.readouterr().err[-500:]}')
