//! The in-memory [`Dataset`] every loader returns, and the slicing used on it.
use std::fmt;
use std::ops::Range;

/// An in-memory image dataset: `images` is NCHW `f32` in `[0, 1]`, `labels[i]` is the
/// class index (into `class_names`) of image `i`.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// `len() * channels * height * width` values, NCHW, in `[0, 1]`.
    pub images: Vec<f32>,
    /// One class index per image, each `< class_names.len()`.
    pub labels: Vec<i64>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
}

impl fmt::Debug for Dataset {
    // Summarised: printing millions of pixels is never what anyone wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("shape_chw", &(self.channels, self.height, self.width))
            .field("classes", &self.class_names.len())
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// A new dataset holding the given images, in the given order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= self.len()` (a caller bug, like slice indexing).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let il = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * il);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * il..(i + 1) * il]);
            labels.push(self.labels[i]);
        }
        self.with_data(images, labels)
    }

    /// A new dataset holding images `r.start..r.end`.
    ///
    /// # Panics
    /// If the range is out of bounds or decreasing (like slice indexing).
    pub fn range(&self, r: Range<usize>) -> Dataset {
        let il = self.image_len();
        let images = self.images[r.start * il..r.end * il].to_vec();
        self.with_data(images, self.labels[r].to_vec())
    }

    fn with_data(&self, images: Vec<f32>, labels: Vec<i64>) -> Dataset {
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// In place: keep only images `r` (no copy of the kept part beyond a memmove).
    pub(super) fn keep_range(&mut self, r: Range<usize>) {
        let il = self.image_len();
        self.images.truncate(r.end * il);
        self.images.drain(..r.start * il);
        self.labels.truncate(r.end);
        self.labels.drain(..r.start);
    }

    pub(super) fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.keep_range(0..n);
        }
    }
}

/// `n` one-pixel-row images (1×1×2, values 2i and 2i+1, label i) for unit tests.
#[cfg(test)]
pub(super) fn tiny(n: usize) -> Dataset {
    Dataset {
        images: (0..n * 2).map(|v| v as f32).collect(),
        labels: (0..n as i64).collect(),
        channels: 1,
        height: 1,
        width: 2,
        class_names: vec!["a".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_range_and_keep_range() {
        let d = tiny(5);
        assert_eq!(d.image_len(), 2);
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.labels, vec![3, 0, 3]);
        assert_eq!(s.images, vec![6.0, 7.0, 0.0, 1.0, 6.0, 7.0]);
        let r = d.range(1..3);
        assert_eq!(r.labels, vec![1, 2]);
        assert_eq!(r.images, vec![2.0, 3.0, 4.0, 5.0]);
        let mut k = d.clone();
        k.keep_range(2..4);
        assert_eq!(k, d.range(2..4));
        assert!(d.range(2..2).is_empty());
    }
}
