//! Fixed-width text tables for the CLI reports (usage, budgets).

use std::fmt::Write as _;

/// A fixed-width text table: columns from `numeric_from` on are
/// right-aligned, the others left-aligned.
pub fn render(lines: &[Vec<String>], numeric_from: usize) -> String {
    let cols = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut row = String::new();
        for (c, cell) in line.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            if c >= numeric_from {
                let _ = write!(row, "{cell:>w$}  ");
            } else {
                let _ = write!(row, "{cell:<w$}  ");
            }
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}
