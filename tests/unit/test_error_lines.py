"""What a failed mkosi's error quotes from its log: the error lines and the lines continuing them."""

from mkosi_initrd_builder.building.build import error_lines


def test_dnf_problem_lines_follow_their_error_line(tmp_path):
    log = tmp_path / "mkosi.log"
    log.write_text("Installing       : filesystem\n"
                   "No matches found for the following disable plugin patterns: *\n"
                   "Error: \n"
                   " Problem: conflicting requests\n"
                   "  - nothing provides libfoo.so.1 needed by bar-1-1.noarch\n"
                   "(try to add '--skip-broken' to skip uninstallable packages)\n"
                   "\n"
                   "  indented but after a blank line\n")
    assert error_lines(log) == ("Error:", " Problem: conflicting requests",
                                "  - nothing provides libfoo.so.1 needed by bar-1-1.noarch")


def test_error_lines_stop_at_the_limit(tmp_path):
    log = tmp_path / "mkosi.log"
    log.write_text("error: one\n  two\n  three\nerror: four\n")
    assert error_lines(log, limit=3) == ("error: one", "  two", "  three")
