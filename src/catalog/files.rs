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
use std::sync::{Arc, Mutex};

/// Per generation directory named by the manifest (its object path): the
/// `quarter=…/file` entries the manifest lists in it.
type Visible = HashMap<String, HashSet<String>>;

/// The local file system as one manifest sees it (see the module docs).
#[derive(Debug)]
pub struct ManifestFiles {
    inner: LocalFileSystem,
    visible: Arc<Visible>,
    /// Mappings kept between reads, if any are.
    mappings: Option<Arc<KeptMappings>>,
}

/// File mappings kept between reads, shared by the snapshots of one
/// catalog: warehouse files never change once written, so a mapping stays
/// good across manifests as long as the file is still listed. Each new
/// snapshot drops the mappings of files its manifest no longer lists, so
/// files removed with an old generation are not held open.
#[derive(Debug)]
pub struct KeptMappings(Mutex<Mappings>);

impl KeptMappings {
    /// Mappings of files totalling up to `budget` bytes.
    pub fn new(budget: u64) -> Arc<KeptMappings> {
        Arc::new(KeptMappings(Mutex::new(Mappings {
            budget,
            ..Mappings::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mappings> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Mappings kept between reads, so that a query over columns an earlier
/// query read finds their pages already mapped: mapping a file anew costs a
/// page fault per 64 KiB read and a TLB shootdown when it is unmapped, an
/// eighth of a warm sum over a column. A mapping is reused only while the
/// path names the same file (device, inode and length); the least recently
/// used go first when their files' sizes pass the budget.
#[derive(Debug, Default)]
struct Mappings {
    /// Most bytes of files kept mapped.
    budget: u64,
    /// Bytes of the files mapped now.
    used: u64,
    /// Reads so far: the clock of `last_used`.
    clock: u64,
    files: HashMap<std::path::PathBuf, Mapped>,
}

#[derive(Debug)]
struct Mapped {
    /// The file's device and inode when it was mapped (its length is the
    /// mapping's).
    file: (u64, u64),
    data: bytes::Bytes,
    last_used: u64,
}

impl Mapped {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

impl Mappings {
    /// Keeps only the mappings of the paths `keep` accepts.
    fn retain(&mut self, mut keep: impl FnMut(&std::path::Path) -> bool) {
        let used = &mut self.used;
        self.files.retain(|path, m| {
            let kept = keep(path);
            if !kept {
                *used -= m.len();
            }
            kept
        });
    }

    fn remove(&mut self, path: &std::path::Path) {
        if let Some(m) = self.files.remove(path) {
            self.used -= m.len();
        }
    }

    /// The mapping of the file at `path` (kept if it fits the budget).
    fn get(&mut self, path: &std::path::Path) -> Option<bytes::Bytes> {
        use std::os::unix::fs::MetadataExt as _;
        self.clock += 1;
        let meta = std::fs::metadata(path).ok()?;
        let file = (meta.dev(), meta.ino());
        if let Some(m) = self.files.get_mut(path) {
            if m.file == file && m.len() == meta.len() {
                m.last_used = self.clock;
                return Some(m.data.clone());
            }
            self.remove(path);
        }
        // Its length is the mapping's, not the one looked up above, in
        // case the path was replaced in between.
        let data = map_file(path)?;
        let len = data.len() as u64;
        if len > self.budget {
            return Some(data);
        }
        while self.used + len > self.budget {
            let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, m)| m.last_used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.used += len;
        self.files.insert(
            path.to_path_buf(),
            Mapped {
                file,
                data: data.clone(),
                last_used: self.clock,
            },
        );
        Some(data)
    }
}

/// The bytes of the file at `path`, mapped; `None` if it cannot be.
fn map_file(path: &std::path::Path) -> Option<bytes::Bytes> {
    let file = std::fs::File::open(path).ok()?;
    let mapped = MappedFile::open_for_ranges(&file).ok()??;
    Some(mapped.bytes().clone())
}

impl ManifestFiles {
    /// The files of `manifest`'s directories under warehouse `root`,
    /// keeping mappings between reads in `kept` (none: each read maps its
    /// file anew). Only the pages read count in the process's resident
    /// memory, and they are the page cache's: the kernel reclaims them like
    /// any cached file page.
    pub fn new(
        root: &std::path::Path,
        manifest: &Manifest,
        kept: Option<Arc<KeptMappings>>,
    ) -> ManifestFiles {
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
        if let Some(kept) = &kept {
            kept.lock().retain(|path| {
                Path::from_filesystem_path(path).is_ok_and(|p| Self::lists(&visible, &p))
            });
        }
        ManifestFiles {
            inner: LocalFileSystem::new(),
            visible: Arc::new(visible),
            mappings: kept,
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
        let data = match &self.mappings {
            Some(kept) => kept.lock().get(&path)?,
            None => map_file(&path)?,
        };
        ranges
            .iter()
            .map(|r| {
                let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
                (start <= end && end <= data.len()).then(|| data.slice(start..end))
            })
            .collect()
    }

    /// Whether the manifest lists the object, if it lies in one of the
    /// manifest's generation directories (`None`: it does not).
    fn listed(visible: &Visible, location: &Path) -> Option<bool> {
        // <generation>/quarter=…/<file>
        let (dir, file) = location.as_ref().rsplit_once('/')?;
        let (generation, part) = dir.rsplit_once('/')?;
        let files = visible.get(generation)?;
        Some(files.contains(&format!("{part}/{file}")))
    }

    /// Whether the manifest lists the object: a file of one of its
    /// generation directories, named in it.
    fn lists(visible: &Visible, location: &Path) -> bool {
        Self::listed(visible, location) == Some(true)
    }

    /// Whether a listed object is one the manifest lists (or lies outside its directories).
    fn shows(visible: &Visible, location: &Path) -> bool {
        Self::listed(visible, location) != Some(false)
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

    /// A manifest whose table `t` is `generation`, listing `names` in 2019Q4.
    fn manifest_listing(generation: &str, names: &[&str]) -> Manifest {
        let mut m = Manifest::default();
        let files = names
            .iter()
            .map(|n| FileEntry {
                name: (*n).into(),
                rows: 1,
                bytes: 1,
            })
            .collect();
        m.dirs.insert(
            "tables/t".into(),
            DirState {
                generation: generation.into(),
                partitions: [(
                    "2019Q4".to_string(),
                    PartitionState {
                        files,
                        rows: 1,
                        written_by: "r".into(),
                        delivery: None,
                    },
                )]
                .into(),
            },
        );
        m
    }

    #[test]
    fn lists_only_the_manifests_files_in_the_directories_it_names() {
        let root = std::path::Path::new("/wh");
        let m = manifest_listing("_ironlake/gen/tables.t/v1-a", &["a.parquet"]);
        let store = ManifestFiles::new(root, &m, None);
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
        let store = ManifestFiles::new(dir.path(), &Manifest::default(), None);
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

    #[tokio::test]
    async fn kept_mappings_serve_later_reads_until_the_file_changes_or_the_budget_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, byte: u8| {
            std::fs::write(dir.path().join(name), vec![byte; 10_000]).unwrap();
            Path::from_filesystem_path(dir.path().join(name)).unwrap()
        };
        let (a, b) = (write("a.parquet", 1), write("b.parquet", 2));
        // Room for one of the two files.
        let store = ManifestFiles::new(
            dir.path(),
            &Manifest::default(),
            Some(KeptMappings::new(15_000)),
        );
        let kept = || {
            let m = store.mappings.as_ref().unwrap().lock();
            let mut names: Vec<_> = m
                .files
                .keys()
                .map(|p| p.file_name().unwrap().to_owned())
                .collect();
            names.sort();
            (names, m.used)
        };
        let range = 0..100;
        let range = std::slice::from_ref(&range);
        let first = store.get_ranges(&a, range).await.unwrap();
        let again = store.get_ranges(&a, range).await.unwrap();
        // The same mapping: the same bytes in memory, not a second mapping.
        assert_eq!(first[0].as_ptr(), again[0].as_ptr());
        assert_eq!(kept(), (vec!["a.parquet".into()], 10_000));
        // Another file pushes the least recently used one out.
        assert_eq!(store.get_ranges(&b, range).await.unwrap()[0][0], 2);
        assert_eq!(kept(), (vec!["b.parquet".into()], 10_000));
        // A file replaced at the same path is read, not the old mapping.
        let tmp = dir.path().join("b.tmp");
        std::fs::write(&tmp, vec![3u8; 12_000]).unwrap();
        std::fs::rename(&tmp, dir.path().join("b.parquet")).unwrap();
        let tail = 11_000..11_100;
        let after = store
            .get_ranges(&b, std::slice::from_ref(&tail))
            .await
            .unwrap();
        assert_eq!(after[0].as_ref(), &[3u8; 100][..]);
        assert_eq!(kept(), (vec!["b.parquet".into()], 12_000));
        // Earlier slices stay readable: they hold their own mapping.
        assert_eq!(first[0].as_ref(), &[1u8; 100][..]);
        // A file larger than the whole budget is mapped for the read, not kept.
        let big = dir.path().join("big.parquet");
        std::fs::write(&big, vec![4u8; 20_000]).unwrap();
        let big = Path::from_filesystem_path(big).unwrap();
        assert_eq!(store.get_ranges(&big, range).await.unwrap()[0][99], 4);
        assert_eq!(kept(), (vec!["b.parquet".into()], 12_000));
    }

    #[tokio::test]
    async fn snapshots_share_kept_mappings_of_the_files_their_manifests_still_list() {
        let dir = tempfile::tempdir().unwrap();
        let generation = "_ironlake/gen/tables.t/v1-a";
        let part = dir.path().join(generation).join("quarter=2019Q4");
        std::fs::create_dir_all(&part).unwrap();
        let manifest = |names: &[&str]| manifest_listing(generation, names);
        let file = |name: &str| {
            std::fs::write(part.join(name), vec![7u8; 1_000]).unwrap();
            Path::from_filesystem_path(part.join(name)).unwrap()
        };
        let (a, b) = (file("a.parquet"), file("b.parquet"));
        let kept = KeptMappings::new(1 << 20);
        let count = || kept.lock().files.len();
        let range = 0..10;
        let range = std::slice::from_ref(&range);
        let first = ManifestFiles::new(
            dir.path(),
            &manifest(&["a.parquet", "b.parquet"]),
            Some(kept.clone()),
        );
        let a1 = first.get_ranges(&a, range).await.unwrap();
        first.get_ranges(&b, range).await.unwrap();
        assert_eq!(count(), 2);
        // A later manifest without b: its mapping goes, a's is shared.
        let later = ManifestFiles::new(dir.path(), &manifest(&["a.parquet"]), Some(kept.clone()));
        assert_eq!(count(), 1);
        assert_eq!(kept.lock().used, 1_000);
        let a2 = later.get_ranges(&a, range).await.unwrap();
        assert_eq!(a1[0].as_ptr(), a2[0].as_ptr());
    }
}
