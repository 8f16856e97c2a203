"""The CLI's report console: printed to a file or a pipe, a report keeps every table cell whole."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lmprof.cli.report_console import report_console

FIGURES = ["71.8 ms", "33.3", "1.1 GiB", "1.08×", "0.93×", "52%", "100%"]


def wide_table() -> Table:
    table = Table("configuration", *(f"figure {k}" for k in range(len(FIGURES))))
    for column in table.columns:
        column.no_wrap = True
    table.add_row("int8 weights + activations (native)", *FIGURES)
    return table


def printed(renderable, capsys) -> str:
    report_console(renderable).print(renderable)
    return capsys.readouterr().out


def test_a_wide_table_keeps_its_cells(no_terminal, capsys):
    out = printed(Group(Text("Ablation"), wide_table()), capsys)
    assert "…" not in out
    assert "int8 weights + activations (native)" in out and all(figure in out for figure in FIGURES)


def test_a_table_inside_a_panel_keeps_its_cells(no_terminal, capsys):
    out = printed(Panel(wide_table(), title="System"), capsys)
    assert "…" not in out and "int8 weights + activations (native)" in out


def test_force_color_does_not_make_a_pipe_a_terminal(no_terminal, monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")  # as CI systems set for their logs
    out = printed(wide_table(), capsys)
    assert "…" not in out and "100%" in out


def test_wrapping_columns_wrap_instead_of_widening(no_terminal):
    table = Table("name", "note")
    table.columns[0].no_wrap = True
    table.add_row("decode", "a long explanation " * 40)
    assert report_console(table).width == 80  # the note wraps; nothing is cut
    table.add_row("int8 weights + activations (native), and a longer name still, to pass 80 columns", "x")
    assert 80 < report_console(table).width < 140


def test_a_long_word_in_a_wrapping_column_is_not_cut(no_terminal, capsys):
    # Wider than 80 with every column at its narrowest: rich then shrinks the widest wrapping
    # column first, past its longest word, and cuts that word, unless the console leaves room.
    table = Table("stage", "where", "what", "bytes")
    table.columns[0].no_wrap = table.columns[3].no_wrap = True
    table.add_row("decode step 3 of 16, layer 29 of 30", "model.layers.*.mlp.down_proj",
                  "aten::to float32 -> bfloat16 " * 4, "1,234,567,890 B")  # fmt: skip
    table.add_row("prefill", "lm_head", "copy " * 30, "12 B")
    out = printed(table, capsys)
    assert "…" not in out and "model.layers.*.mlp.down_proj" in out


def test_the_users_width_is_kept(no_terminal, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert report_console(wide_table()).width == 80
