"""Readers: a PDF's pages (through pypdf), folders walked by suffix."""

from __future__ import annotations

from gptforge.retrieval import add_paths, search
from gptforge.retrieval.readers import find_files, read_document

from helpers import write


def tiny_pdf(pages: list[str]) -> bytes:
    """A PDF with one line of Helvetica text per page, its cross-reference table computed."""
    n = len(pages)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(f"{4 + 2 * i} 0 R" for i in range(n)), n),
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_a_pdf_is_read_page_by_page_and_cited_by_page(tmp_path):
    path = write(tmp_path / "docs" / "manual.pdf", tiny_pdf(["Installing the pump", "The oak valve must be closed"]))
    document = read_document(path, path.read_bytes())
    assert "oak valve" in document.text and document.kind == "pdf"
    add_paths(tmp_path / "index", [tmp_path / "docs"], chunk_tokens=8, overlap=0, progress=False)
    [hit] = search(tmp_path / "index", "oak valve")
    assert (hit.line_start, hit.line_end) == (2, 2) and hit.where.endswith("manual.pdf:p2")


def test_a_damaged_pdf_is_unreadable(tmp_path):
    lines = []
    write(tmp_path / "docs" / "broken.pdf", b"%PDF-1.4\nnot really")
    report = add_paths(tmp_path / "index", [tmp_path / "docs"], progress=False, warn=lines.append)
    assert report.added == 0 and len(lines) == 1 and "not a readable PDF" in lines[0]


def test_folders_give_known_suffixes_and_a_named_file_is_taken_as_is(tmp_path):
    for name in ("a.txt", "b.MD", "c.py", ".hidden/d.txt", "sub/e.html", "f.jsonl"):
        write(tmp_path / "docs" / name, "x")
    write(tmp_path / "notes.log", "x")
    files, folders = find_files([tmp_path / "docs", tmp_path / "notes.log"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "docs/a.txt", "docs/b.MD", "docs/f.jsonl", "docs/sub/e.html", "notes.log"]
    assert folders == [(tmp_path / "docs").resolve()]
