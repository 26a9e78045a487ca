// PLACEHOLDER: the snapshot coordinator's tests go here.
import Testing
import ShadowCopy
