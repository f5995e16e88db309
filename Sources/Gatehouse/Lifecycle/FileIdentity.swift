#if canImport(Glibc)
import Glibc
#endif

/// What identifies a version of a file for change detection: device, inode, size and mtime.
///
/// `stat` follows symlinks, so both an editor's rename-into-place (new inode) and Kubernetes'
/// swap of the `..data` symlink behind a mounted Secret (new target) show up as a change.
public struct FileIdentity: Sendable, Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int
    var modifiedNanoseconds: Int

    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
        self.size = Int64(info.st_size)
        self.modifiedSeconds = Int(info.st_mtim.tv_sec)
        self.modifiedNanoseconds = Int(info.st_mtim.tv_nsec)
    }
}
