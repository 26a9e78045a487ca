enum ProtectionModule {}
