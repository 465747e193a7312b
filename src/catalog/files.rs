//! The files one snapshot may read: its manifest's, and no others.
//!
//! Tables are listing tables over generation directories. A generation can
//! gain files after a snapshot was taken (pushes and quarantine append in
//! place), so each snapshot's session reads local files through
//! [`ManifestFiles`], which hides from directory listings every file of a
//! manifest-named generation that the snapshot's manifest does not list.
//! Directories the manifest does not name (an aggregate generation a refresh
//! is building and reading back) are listed as they are.

use crate::config::schema::PARTITION_COLUMN;
use crate::warehouse::Manifest;
use crate::warehouse::fsutil::MappedFile;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Per generation directory named by the manifest (its object path): the
/// `quarter=…/file` entries the manifest lists in it.
type Visible = HashMap<String, HashSet<String>>;

/// The local file system as one manifest sees it (see the module docs).
#[derive(Debug)]
pub struct ManifestFiles {
    inner: LocalFileSystem,
    visible: Arc<Visible>,
}

impl ManifestFiles {
    /// The files of `manifest`'s directories under warehouse `root`.
    pub fn new(root: &std::path::Path, manifest: &Manifest) -> ManifestFiles {
        let mut visible = Visible::new();
        for dir in manifest.dirs.values() {
            let Ok(url) =
                ListingTableUrl::parse(format!("{}/", root.join(&dir.generation).display()))
            else {
                continue;
            };
            let files = visible
                .entry(url.prefix().as_ref().trim_end_matches('/').to_string())
                .or_default();
            for (part, state) in &dir.partitions {
                for f in &state.files {
                    files.insert(format!("{PARTITION_COLUMN}={part}/{}", f.name));
                }
            }
        }
        ManifestFiles {
            inner: LocalFileSystem::new(),
            visible: Arc::new(visible),
        }
    }

    /// `ranges` of the file at `location` as slices of one mapping of it;
    /// `None` when it cannot be mapped or a range lies outside it.
    fn mapped_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Option<Vec<bytes::Bytes>> {
        let path = self.inner.path_to_filesystem(location).ok()?;
        let file = std::fs::File::open(path).ok()?;
        let mapped = MappedFile::open_for_ranges(&file).ok()??;
        let data = mapped.bytes();
        ranges
            .iter()
            .map(|r| {
                let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
                (start <= end && end <= data.len()).then(|| data.slice(start..end))
            })
            .collect()
    }

    /// Whether a listed object is one the manifest lists (or lies outside its directories).
    fn shows(visible: &Visible, location: &Path) -> bool {
        let loc = location.as_ref();
        // <generation>/quarter=…/<file>
        let Some((dir, file)) = loc.rsplit_once('/') else {
            return true;
        };
        let Some((generation, part)) = dir.rsplit_once('/') else {
            return true;
        };
        match visible.get(generation) {
            Some(files) => files.contains(&format!("{part}/{file}")),
            None => true,
        }
    }
}

impl std::fmt::Display for ManifestFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManifestFiles({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for ManifestFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    /// Column chunks come as slices of a mapping of the file: the object
    /// store's own reads zero-fill a fresh buffer per range and copy the
    /// page cache into it, which was a quarter of a sum's time over a
    /// column. Warehouse files never change once written (new ones are
    /// added, old ones removed, none truncated), so the mapping stays
    /// valid while the slices live. Anything unusual (a range past the
    /// end, a file that cannot be mapped) is left to the object store.
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        if let Some(parts) = self.mapped_ranges(location, ranges) {
            return Ok(parts);
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let visible = self.visible.clone();
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = m
                    .as_ref()
                    .map_or(true, |m| Self::shows(&visible, &m.location));
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects
            .retain(|m| Self::shows(&self.visible, &m.location));
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::{DirState, FileEntry, PartitionState};

    #[test]
    fn lists_only_the_manifests_files_in_the_directories_it_names() {
        let root = std::path::Path::new("/wh");
        let mut m = Manifest::default();
        let file = |name: &str| FileEntry {
            name: name.into(),
            rows: 1,
            bytes: 1,
        };
        m.dirs.insert(
            "tables/t".into(),
            DirState {
                generation: "_ironlake/gen/tables.t/v1-a".into(),
                partitions: [(
                    "2019Q4".to_string(),
                    PartitionState {
                        files: vec![file("a.parquet")],
                        rows: 1,
                        written_by: "r".into(),
                        delivery: None,
                    },
                )]
                .into(),
            },
        );
        let store = ManifestFiles::new(root, &m);
        let shows = |p: &str| ManifestFiles::shows(&store.visible, &Path::from(p));
        assert!(shows(
            "wh/_ironlake/gen/tables.t/v1-a/quarter=2019Q4/a.parquet"
        ));
        // Appended in place after the snapshot: hidden, also in a new partition.
        assert!(!shows(
            "wh/_ironlake/gen/tables.t/v1-a/quarter=2019Q4/b.parquet"
        ));
        assert!(!shows(
            "wh/_ironlake/gen/tables.t/v1-a/quarter=2020Q1/c.parquet"
        ));
        // A generation the manifest does not name (being built): as it is.
        assert!(shows(
            "wh/_ironlake/gen/published.x/v2-b/quarter=2019Q4/d.parquet"
        ));
    }

    #[tokio::test]
    async fn ranges_come_from_a_mapping_and_bad_ranges_get_the_stores_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f.parquet"), &data).unwrap();
        let store = ManifestFiles::new(dir.path(), &Manifest::default());
        let location = Path::from_filesystem_path(dir.path().join("f.parquet")).unwrap();
        let ranges = [0..10, 4_096..70_000, 99_990..100_000, 5..5];
        let parts = store.get_ranges(&location, &ranges).await.unwrap();
        for (part, r) in parts.iter().zip(&ranges) {
            assert_eq!(part.as_ref(), &data[r.start as usize..r.end as usize]);
        }
        // They are slices of the file's mapping, not copies on the heap.
        assert!(store.mapped_ranges(&location, &ranges).is_some());
        // Past the end, or a missing file: the object store answers, with its errors.
        let past_end = 99_990..100_001;
        let past_end = std::slice::from_ref(&past_end);
        assert!(store.mapped_ranges(&location, past_end).is_none());
        assert!(store.get_ranges(&location, past_end).await.is_err());
        std::fs::write(dir.path().join("gone.parquet"), b"x").unwrap();
        let gone = Path::from_filesystem_path(dir.path().join("gone.parquet")).unwrap();
        std::fs::remove_file(dir.path().join("gone.parquet")).unwrap();
        let first = 0..1;
        let first = std::slice::from_ref(&first);
        assert!(store.mapped_ranges(&gone, first).is_none());
        assert!(store.get_ranges(&gone, first).await.is_err());
    }
}
