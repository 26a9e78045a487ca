// The snapshot coordinator (the VSS analog) lives in this module: writers, providers, coordinator.
import VirtualDisk
