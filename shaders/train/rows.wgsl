// The rows a kernel reads from the data set (after the kernel's `order` binding, the
// epoch's row order as u32 indices).
// Where a data row comes from: INPUT 0 the previous layer's activations (row r), 1 the
// data set's rows from s.offset on, 2 the data set's rows through the order indices.
override INPUT: u32 = 0u;

fn source_row(r: u32) -> u32 {
    switch INPUT {
        case 1u: {
            return s.offset + r;
        }
        case 2u: {
            return order[s.offset + r];
        }
        default: {
            return r;
        }
    }
}
